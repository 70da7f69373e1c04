"""Retrieve and open a 300-slice CT series from a local Orthanc, against dicomweb-client.

A local Orthanc with its DICOMweb plugin (:func:`napari_medattn.pacs.orthanc.local_orthanc`,
basic authentication) receives a synthetic 300 x 512 x 512 CT series (written by
:func:`napari_medattn.io.write_dicom_series`, stored with STOW-RS). Then, alternating and
``--repeats`` times each, median wall time:

* ours: :func:`napari_medattn.pacs.retrieve_series` into a fresh cache folder (one streamed
  WADO-RS request, each instance written to the cache, while the server's list of the
  series' instances is asked for alongside) and :func:`napari_medattn.io.read_volume` of the
  folder: the series ready as a volume, on disk for next time;
* peer: dicomweb-client's own ``DICOMwebClient.retrieve_series`` on the same server and
  session settings: the instances parsed into pydicom datasets in memory, not stacked, not
  stored;
* ours again with the series already cached (the second open of a series).

The volume opened is checked equal to the one uploaded. Run::

    .venv/bin/python benchmarks/bench_pacs.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_medattn.io import Volume, read_volume, write_dicom_series
from napari_medattn.pacs import Connection, retrieve_series, store
from napari_medattn.pacs.orthanc import local_orthanc

USER, PASSWORD = "bench", "bench-password"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # The series written (158 MB, and the caches and server storage) go when the run ends.
    with tempfile.TemporaryDirectory(prefix="bench_pacs_") as temporary:
        run(Path(temporary), args)


def run(work: Path, args: argparse.Namespace) -> None:
    affine = np.array([[0, 0, 0.7, -180], [0, 0.7, 0, -180], [1.5, 0, 0, -200],
                       [0, 0, 0, 1.0]])
    z, y, x = np.ogrid[:args.slices, :512, :512]
    ct = (np.hypot(y - 256, x - 256) < 200) * (40 + (z % 50)) - 1000 * (
        np.hypot(y - 256, x - 256) >= 200)
    ct = np.broadcast_to(ct, (args.slices, 512, 512)).astype(np.int16)
    files = write_dicom_series(work / "ct", Volume(ct, affine, "CT"), rescale_intercept=-1024,
                               patient={"PatientName": "Bench^PACS", "PatientID": "P1"})
    uploaded = read_volume(work / "ct")
    with local_orthanc(work / "orthanc", USER, PASSWORD) as url:
        connection = Connection(url, username=USER, password=PASSWORD)
        for start in range(0, len(files), 50):
            store(connection, files[start:start + 50])
        study, series = uploaded.meta["study_uid"], uploaded.meta["series_uid"]
        ours, peer = [], []
        for k in range(args.repeats):
            cache = work / f"cache{k}"
            started = time.perf_counter()
            volume = read_volume(retrieve_series(connection, study, series, cache_dir=cache))
            ours.append(time.perf_counter() - started)
            assert np.array_equal(volume.data, uploaded.data)
            del volume
            started = time.perf_counter()
            datasets = connection.client().retrieve_series(study, series)
            peer.append(time.perf_counter() - started)
            assert len(datasets) == args.slices
            del datasets
        cached = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            read_volume(retrieve_series(connection, study, series, cache_dir=work / "cache0"))
            cached.append(time.perf_counter() - started)
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    ours_s, peer_s, cached_s = (statistics.median(t) for t in (ours, peer, cached))
    print(f"series: {args.slices} x 512 x 512 CT, {size_mb:.0f} MB")
    print(f"ours retrieve+open   {ours_s:7.2f} s   (runs {', '.join(f'{t:.2f}' for t in ours)})")
    print(f"peer retrieve_series {peer_s:7.2f} s   (runs {', '.join(f'{t:.2f}' for t in peer)})")
    print(f"ours cached open     {cached_s:7.2f} s")
    print(f"FIGURE pacs_retrieve_open_s {ours_s:.2f} s")
    print(f"FIGURE pacs_dicomweb_client_retrieve_s {peer_s:.2f} s")
    print(f"FIGURE pacs_retrieve_open_vs_dicomweb_client {ours_s / peer_s:.2f} ratio")
    print(f"FIGURE pacs_cached_open_s {cached_s:.2f} s")


if __name__ == "__main__":
    main()
