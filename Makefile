# The two commands of the README. Both bootstrap everything first (idempotent).
.PHONY: demo test bootstrap lint

bootstrap:
	@./scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/morpheus demo

test: bootstrap
	.venv/bin/ruff check src tests
	.venv/bin/python -m pytest -q -rs tests

lint: bootstrap
	.venv/bin/ruff check src tests
