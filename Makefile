# Newsroom: `make demo` sets everything up and runs a batch on the embedded default; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
MANAGE := $(BIN)/python manage.py
PG_URL ?= postgres://postgres@127.0.0.1:5432/postgres
# The Redis database the tests use and empty (FLUSHDB) before and after each test that needs Redis: TEST_REDIS_URL
# from the environment, else from .env, else db 15 of the local server. Never point it at a database you keep.
TEST_REDIS_URL ?= $(or $(shell sed -n 's/^TEST_REDIS_URL=//p' .env 2>/dev/null),redis://127.0.0.1:6379/15)
export TEST_REDIS_URL
REDIS_NOTE = @echo "Tests that need Redis use $(TEST_REDIS_URL) and empty that database."

.PHONY: install demo test test-postgres screenshots bench serve migrate check-deploy clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

.env:
	cp .env.example .env
	$(PYTHON) -c "import secrets,re,pathlib; p=pathlib.Path('.env'); k=secrets.token_urlsafe(50); p.write_text(re.sub(r'(?m)^SECRET_KEY=.*$$', 'SECRET_KEY='+k, p.read_text()))"

install: $(STAMP) .env

migrate: install
	$(MANAGE) migrate --noinput -v 0

# The live half (bench/demo_live.py) runs preflight and a batch against the local stand-in for Claude: no key needed.
demo: migrate
	$(MANAGE) import_topics topics/sample_data/sample_topics.json
	$(MANAGE) runbatch --dry-run
	$(BIN)/python -m bench.demo_live

# The database is DATABASE_URL's (SQLite under var/ when unset); `make test-postgres` runs on PostgreSQL.
test: install
	$(REDIS_NOTE)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgres: install
	$(REDIS_NOTE)
	DATABASE_URL=$(PG_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

screenshots: install
	$(REDIS_NOTE)
	UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest tests/admin/test_browser_desk.py

bench: migrate
	$(BIN)/python -m bench.run

# Web, worker and beat (Procfile); with no ANTHROPIC_API_KEY also the local stand-in for Claude on STANDIN_PORT.
serve: migrate
	$(BIN)/python -m newsroom.serve

check-deploy: install
	DJANGO_DEBUG=0 SECRET_KEY=$$($(BIN)/python -c "import secrets; print(secrets.token_urlsafe(50))") \
	ALLOWED_HOSTS=newsroom.example.com $(MANAGE) check --deploy --fail-level WARNING

clean:
	rm -rf var/broker var/*.sqlite3*
