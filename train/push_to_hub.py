"""CLI: python -m train.push_to_hub --folder DIR --repo-id NAME [--private] [--commit-message MSG].

Uploads a save_pretrained() export in one commit (its README.md is the card; an older export's model_card.md
becomes README.md). The token comes from HF_TOKEN or the saved login; the endpoint from HF_ENDPOINT unless
--endpoint is given.
"""

from __future__ import annotations

import argparse
import sys

from train.hub import push_export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.push_to_hub", description=__doc__.splitlines()[2])
    parser.add_argument("--folder", required=True, help="export folder (config.json, model.safetensors, ...)")
    parser.add_argument("--repo-id", required=True, help="target repo, e.g. my-org/d-beta")
    parser.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--revision", default=None, help="branch to push to (default: main)")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    args = parser.parse_args(argv)
    try:
        url = push_export(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            endpoint=args.endpoint,
        )
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
