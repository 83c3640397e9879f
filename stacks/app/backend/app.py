"""The backend app: answers every request with its release (app.json).

Runs as an AWS Lambda handler on the aws platform; on the local platform it
is the content of the release directory (``python app.py`` prints the same).
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def release_info():
    with open(os.path.join(HERE, "app.json"), encoding="utf-8") as fh:
        return json.load(fh)


def database_password():
    """DB_PASSWORD from the release's backend.env (local platform), else the environment."""
    try:
        with open(os.path.join(HERE, "backend.env"), encoding="utf-8") as fh:
            pairs = dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)
    except FileNotFoundError:
        pairs = {}
    return pairs.get("DB_PASSWORD") or os.environ.get("DB_PASSWORD", "")


def handler(_event=None, _context=None):
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(
            {"status": "ok", "database_password": "set" if database_password() else "unset", **release_info()}
        ),
    }


if __name__ == "__main__":
    print(handler()["body"])
