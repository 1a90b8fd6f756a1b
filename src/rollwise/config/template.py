"""The commented rollwise.yaml written by `rollwise init`."""

SCHEMA_FILE = ".rollwise.schema.json"  # `rollwise config schema --out` refreshes it

TEMPLATE = """\
# yaml-language-server: $schema=.rollwise.schema.json
# rollwise.yaml — see docs/config.md for every key
app: {app}
source: .                 # directory packaged into each release
build:
  command: null           # e.g. "npm ci && npm run build"; runs before packaging
run:
  command: "{run}"        # {{port}} and $PORT are the instance's port
health:
  path: /health
  ready_timeout_s: 30
keep_releases: 5          # at least 3
environments:
  dev:
    router:
      listen: 127.0.0.1:8080
  staging:
    router:
      listen: 127.0.0.1:8180
  prod:
    instances: 2
    router:
      listen: 127.0.0.1:8280
"""


def render(app: str, run: str) -> str:
    return TEMPLATE.format(app=app, run=run)
