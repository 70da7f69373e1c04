"""``medattn pacs search|get|put|clear-cache``: a DICOMweb server from the command line.

The connection options mirror the DICOM browser widget: ``--url``, ``--user`` with the
password from ``$MEDATTN_PACS_PASSWORD`` (or a prompt on a terminal), or a bearer token from
``$MEDATTN_PACS_TOKEN``; TLS verification stays on unless ``--ca-bundle`` names another CA
or ``--insecure`` turns it off for a test server. Secrets are never read from the command
line (where ``ps`` and shell history would show them) and never printed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

PASSWORD_ENV = "MEDATTN_PACS_PASSWORD"
TOKEN_ENV = "MEDATTN_PACS_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``medattn pacs ACTION``."""
    parser = subparsers.add_parser(
        "pacs", help="search, retrieve from and store to a DICOMweb server (PACS)",
        description="Talk to a DICOMweb server (QIDO-RS search, WADO-RS retrieval into the "
                    "user cache folder, STOW-RS store). Server faults are one sentence on "
                    "stderr and exit code 1.")
    actions = parser.add_subparsers(title="actions", metavar="ACTION")

    search = actions.add_parser("search", help="list studies, or series with --series")
    _add_connection(search)
    search.add_argument("--patient", metavar="NAME", help="patient name (* and ? are "
                                                          "wildcards)")
    search.add_argument("--patient-id", metavar="ID")
    search.add_argument("--date", metavar="YYYYMMDD[-YYYYMMDD]", help="study date or range")
    search.add_argument("--modality", help="CT, MR, PT, SEG, ...")
    search.add_argument("--study", metavar="UID", help="series of this study only")
    search.add_argument("--series", action="store_true", help="list series, not studies")
    search.set_defaults(func=run_search)

    get = actions.add_parser("get", help="retrieve a series into the cache; prints its "
                                         "folder")
    _add_connection(get)
    get.add_argument("--study", metavar="UID", required=True)
    get.add_argument("--series", metavar="UID", required=True)
    _add_cache(get)
    get.set_defaults(func=run_get)

    put = actions.add_parser("put", help="store DICOM files (SEG, SR, ...) with STOW-RS")
    _add_connection(put)
    put.add_argument("files", nargs="+", metavar="FILE")
    put.set_defaults(func=run_put)

    clear = actions.add_parser("clear-cache", help="delete every retrieved series")
    _add_cache(clear)
    clear.set_defaults(func=run_clear)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="DICOMweb root, e.g. "
                                                     "https://host/dicom-web")
    parser.add_argument("--user", help=f"basic authentication user; the password comes "
                                       f"from ${PASSWORD_ENV} or a prompt")
    parser.add_argument("--token", action="store_true",
                        help=f"bearer authentication with the token in ${TOKEN_ENV}")
    parser.add_argument("--ca-bundle", metavar="PEM", help="CA certificates to verify the "
                                                           "server with")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the server's TLS certificate (test servers only)")
    parser.add_argument("--timeout", type=float, default=20.0, metavar="S",
                        help="seconds to wait for the server (default: 20)")


def _add_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", metavar="DIR", help="cache folder (default: "
                                                       "$MEDATTN_CACHE_DIR or the user cache)")


def connection_from(args: argparse.Namespace):
    """The :class:`~napari_medattn.pacs.Connection` the options describe."""
    from napari_medattn.errors import PacsError
    from napari_medattn.pacs import Connection

    password = token = None
    if args.token:
        token = os.environ.get(TOKEN_ENV)
        if not token:
            raise PacsError(f"--token needs the token in ${TOKEN_ENV}.")
    if args.user:
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            if not sys.stdin.isatty():
                raise PacsError(f"--user needs the password in ${PASSWORD_ENV} (or a "
                                f"terminal to ask on).")
            password = getpass.getpass(f"Password for {args.user}: ")
    verify = False if args.insecure else (args.ca_bundle or True)
    return Connection(args.url, username=args.user, password=password, token=token,
                      verify=verify, timeout_s=args.timeout)


def run_search(args: argparse.Namespace) -> int:
    from napari_medattn.pacs import search_series, search_studies

    connection = connection_from(args)
    criteria = dict(patient_name=args.patient, patient_id=args.patient_id, date=args.date,
                    modality=args.modality)
    if args.series or args.study:
        rows = search_series(connection, study_uid=args.study, **criteria)
        columns = ("date", "patient_name", "modality", "number", "instances", "description",
                   "study_uid", "series_uid")
    else:
        rows = search_studies(connection, **criteria)
        columns = ("date", "patient_name", "patient_id", "modalities", "series",
                   "description", "study_uid")
    print("\t".join(columns))
    for row in rows:
        print("\t".join(row[c] for c in columns))
    return 0


def run_get(args: argparse.Namespace) -> int:
    from napari_medattn.cli.common import ProgressBar
    from napari_medattn.pacs import retrieve_series

    connection = connection_from(args)
    with ProgressBar(f"series …{args.series[-12:]}", unit="instance") as bar:
        folder = retrieve_series(connection, args.study, args.series, cache_dir=args.cache,
                                 progress=bar.update)
    print(folder)
    return 0


def run_put(args: argparse.Namespace) -> int:
    from napari_medattn.pacs import store

    stored = store(connection_from(args), args.files)
    print(f"stored {len(stored)} instance(s)")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from napari_medattn.pacs import cache_root, clear_cache

    freed = clear_cache(args.cache)
    print(f"cleared {cache_root(args.cache)} ({freed / 1e6:.1f} MB)")
    return 0
