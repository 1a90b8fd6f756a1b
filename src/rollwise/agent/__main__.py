"""`python3 -m rollwise.agent --env-dir DIR [--listen HOST:PORT]`: the agent alone, as it runs
on a fleet host. It needs only the standard library and the modules `rollwise hosts setup`
copies there, never the controller's dependencies."""

from __future__ import annotations

import argparse

from rollwise.agent.server import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python3 -m rollwise.agent")
    parser.add_argument("--env-dir", required=True, help="the environment's folder")
    parser.add_argument("--listen", help="where the embedded router listens (host:port)")
    args = parser.parse_args()
    main(args.env_dir, args.listen)
