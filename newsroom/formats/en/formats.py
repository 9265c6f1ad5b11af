# One way to show a moment across the desk, with its zone (TIME_ZONE): "3 Dec 2026, 14:05 CET". Django uses it
# wherever it renders a date-time itself (admin lists and read-only fields, {{ value }}); newsroom.formatting
# and the desk_time filter use it everywhere else.
DATETIME_FORMAT = "j M Y, H:i T"
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
