"""download_la2018 against a local HTTP server; the 2x reduction rule by hand."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from engine.errors import DataError, InputError, NetworkError
from engine.io.download import (
    DEFAULT_BASE_URL,
    LA2018_CASE_IDS,
    case_url,
    convert_la2018,
    download_la2018,
    reduce_half,
)

SUBDIR = "2018LA_Seg_Training Set"  # with the space, like the repository


def _source_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(9, 8, 7)).astype(np.float32)  # odd sizes: cropped
    label = (rng.random((9, 8, 7)) < 0.5).astype(np.uint8)
    return image, label


def _write_source(path: Path, seed: int) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    image, label = _source_arrays(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        f.create_dataset("label", data=label, compression="gzip")


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    root = tmp_path / "srv"
    for idx in (0, 1):
        _write_source(root / SUBDIR / LA2018_CASE_IDS[idx] / "mri_norm2.h5", idx)
    (root / SUBDIR / LA2018_CASE_IDS[2]).mkdir()
    (root / SUBDIR / LA2018_CASE_IDS[2] / "mri_norm2.h5").write_bytes(b"not h5 at all")
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/2018LA_Seg_Training%20Set", root, handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_reduce_half_rule_by_hand() -> None:
    image = np.zeros((3, 2, 5), np.float32)  # crops to (2, 2, 4): two blocks
    image[:2, :, :2] = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    image[2] = 100.0  # the dropped last X plane must not count
    image[:, :, 4] = -100.0  # nor the last Z plane
    label = np.zeros((3, 2, 5), np.uint8)
    label[:2, :, :2].flat[:4] = 1  # block 0: 4 of 8 -> tie -> foreground
    label[:2, :, 2:4].flat[:3] = 1  # block 1: 3 of 8 -> background
    label[2] = 1
    img_h, lab_h = reduce_half(image, label)
    assert img_h.shape == lab_h.shape == (1, 1, 2)
    assert img_h.dtype == np.float32 and lab_h.dtype == np.uint8
    assert img_h[0, 0, 0] == pytest.approx(3.5) and img_h[0, 0, 1] == 0.0
    np.testing.assert_array_equal(lab_h.ravel(), [1, 0])
    fives = np.zeros((2, 2, 2), np.uint8)
    fives.flat[:5] = 1
    assert reduce_half(np.zeros((2, 2, 2)), fives)[1].item() == 1
    with pytest.raises(InputError):
        reduce_half(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))


def test_reduce_half_matches_a_loop() -> None:
    image, label = _source_arrays(4)
    img_h, lab_h = reduce_half(image, label)
    for x, y, z in np.ndindex(*img_h.shape):
        block = (slice(2 * x, 2 * x + 2), slice(2 * y, 2 * y + 2), slice(2 * z, 2 * z + 2))
        assert img_h[x, y, z] == np.float32(image[block].astype(np.float64).mean())
        assert lab_h[x, y, z] == int(label[block].sum() >= 4)


def test_ids_and_urls() -> None:
    assert len(LA2018_CASE_IDS) == 100 and list(LA2018_CASE_IDS) == sorted(LA2018_CASE_IDS)
    assert case_url(LA2018_CASE_IDS[0]) == (
        "https://raw.githubusercontent.com/yulequan/UA-MT/master/data/"
        "2018LA_Seg_Training%20Set/06SR5RBREL16DQ6M8LWS/mri_norm2.h5"
    )
    assert DEFAULT_BASE_URL.endswith("%20Set")


def test_ids_match_shared_manifest(la_dir: Path) -> None:
    import csv

    with open(la_dir / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == list(LA2018_CASE_IDS)
    assert [r["file"] for r in rows] == [f"la_{i:03d}.npz" for i in range(100)]


def test_download_and_convert(tmp_path: Path, server) -> None:
    base, _, requests = server
    out = tmp_path / "out"
    paths = download_la2018(out, base_url=base, cases=[1, LA2018_CASE_IDS[0]], timeout=5, progress=False)
    assert [p.name for p in paths] == ["la_000.npz", "la_001.npz"]
    for idx, path in enumerate(paths):
        with np.load(path) as z:
            assert sorted(z.files) == ["image", "label", "spacing"]
            img_h, lab_h = reduce_half(*_source_arrays(idx))
            np.testing.assert_array_equal(z["image"], img_h)
            np.testing.assert_array_equal(z["label"], lab_h)
            assert z["spacing"].dtype == np.float32 and list(z["spacing"]) == [1.25] * 3
    assert len(requests) == 2
    assert all(r.startswith("/2018LA_Seg_Training%20Set/") for r in requests)
    # present files are skipped: no new request
    download_la2018(out, base_url=base, cases=[0, 1], timeout=5, progress=False)
    assert len(requests) == 2
    assert sorted(p.name for p in out.iterdir()) == ["la_000.npz", "la_001.npz"]


def test_bad_payload_and_missing_file(tmp_path: Path, server) -> None:
    base, _, _ = server
    out = tmp_path / "out"
    with pytest.raises(DataError, match="source h5"):
        download_la2018(out, base_url=base, cases=[2], timeout=5, progress=False)
    with pytest.raises(NetworkError, match="HTTP 404"):
        download_la2018(out, base_url=base, cases=[3], timeout=5, progress=False)
    assert list(out.iterdir()) == []  # no temporary file left behind


def test_unreachable_network_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:  # find a free port, then close it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/data"
    with pytest.raises(NetworkError, match=f"127.0.0.1:{port}/data/{LA2018_CASE_IDS[5]}"):
        download_la2018(tmp_path, base_url=base, cases=[5], timeout=2, progress=False)


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(NetworkError, match="127.0.0.1"):
            download_la2018(tmp_path, base_url=base, cases=[0], timeout=0.3, progress=False)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        download_la2018(tmp_path, cases=[100], progress=False)
    with pytest.raises(InputError):
        download_la2018(tmp_path, cases=["NOT_A_CASE"], progress=False)
    with pytest.raises(InputError):
        download_la2018(tmp_path, cases=[0], timeout=0, progress=False)


def test_convert_rejects_non_binary_labels(tmp_path: Path) -> None:
    import h5py

    src = tmp_path / "s.h5"
    with h5py.File(src, "w") as f:
        f["image"] = np.zeros((4, 4, 4), np.float32)
        f["label"] = np.full((4, 4, 4), 255, np.uint8)
    with pytest.raises(DataError, match="other than 0 and 1"):
        convert_la2018(src, tmp_path / "la_000.npz")
