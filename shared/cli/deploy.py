"""``kinfer deploy``: steps of a deployment that run outside the cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.cli.errors import CliError
from shared.errors import KinferError
from shared.settings import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("deploy", help="deployment steps (model repository upload)")
    sub = p.add_subparsers(dest="deploy_command", metavar="ACTION", required=True)
    up = sub.add_parser("upload-models", help="upload the Triton model repository to the bucket Triton reads")
    up.add_argument(
        "--repository",
        default="models/production",
        type=Path,
        help="local Triton model repository (default: models/production)",
    )
    up.add_argument("--bucket", default="triton-models", help="destination bucket (default: triton-models)")
    up.add_argument("--prefix", default="models", help="key prefix in the bucket (default: models)")
    up.add_argument(
        "--delete-stale",
        action="store_true",
        help="also delete objects under the prefix that the local repository no longer has",
    )
    up.set_defaults(func=upload_models)


def upload_models(args: argparse.Namespace) -> int:
    """Upload with the S3 endpoint and credentials of Settings (S3_* variables)."""
    from shared.backends.repository import upload_repository
    from shared.clients.storage import make_s3_client

    settings = Settings.from_env()
    try:
        report = upload_repository(
            make_s3_client(settings), args.repository, args.bucket, args.prefix, delete_stale=args.delete_stale
        )
    except KinferError as exc:
        raise CliError(f"upload failed: {exc.message}", code=exc.code) from None
    print(
        f"uploaded {len(report.uploaded)} files ({report.bytes} bytes) of models "
        f"{', '.join(report.models)} to s3://{report.bucket}/{report.prefix}/"
        + (f"; deleted {len(report.deleted)} stale objects" if report.deleted else "")
    )
    return 0
