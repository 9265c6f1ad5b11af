from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

admin.site.site_header = "Newsroom"
admin.site.site_title = "Newsroom"
admin.site.index_title = "Editor's desk"
# The desk's pages are wide tables (topics, items, the ledger): they need the width more than a second menu does;
# the home page and the breadcrumbs lead everywhere.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
]
