"""An hnswlib graph as numpy arrays: how :class:`~monorec.index.hnswlib_index.HnswlibIndex` checkpoints.

hnswlib's own ``save_index`` writes its file while it holds the GIL (~150 ms at 100k entities, M = 32):
in the serving process every request thread waits that long (B14). Its pickling state copies the same
graph into arrays in ~30 ms (under the GIL too), which numpy then writes without it, off the loader's
thread. The state is stored as plain arrays and a JSON record (never pickled) and loaded back through
hnswlib's ``__setstate__``, which copies the arrays into the graph with no checks of its own: every size
and every neighbour id is checked here first, so a bad file is an error, never a crash. The vectors live
in the graph's level-0 rows, so the file holds them once.

Layout of hnswlib's level-0 row (``size_data_per_element`` bytes): the link count (uint32, low 16 bits)
and ``max_M0`` neighbour ids (uint32), then the vector (``dim`` float32), then the label (uint64). An
element at level L > 0 has L upper link lists of ``size_links_per_element`` bytes, the same way laid out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GRAPH_STATE_FILE", "capture_graph", "restore_graph", "write_graph"]

GRAPH_STATE_FILE = "graph_state.npz"
_ARRAYS = {
    "label_lookup_external": np.uint64,
    "label_lookup_internal": np.uint32,
    "element_levels": np.int32,
    "data_level0": np.int8,
    "link_lists": np.int8,
}


def capture_graph(graph: Any) -> dict[str, Any]:
    """hnswlib's state of ``graph``, cut to its elements (the unused capacity is not kept)."""
    state = dict(graph.__getstate__()[0])
    n = int(state["cur_element_count"])
    state["data_level0"] = state["data_level0"][: n * int(state["size_data_per_element"])]
    state["element_levels"] = state["element_levels"][:n]
    state["max_elements"] = n
    return state


def write_graph(state: dict[str, Any], path: Path) -> None:
    """Writes a :func:`capture_graph` state into ``path`` (an ``.npz`` of plain arrays)."""
    params = {k: v for k, v in state.items() if k not in _ARRAYS}
    np.savez(path, params=np.array(json.dumps(params)), **{k: state[k] for k in _ARRAYS})


def restore_graph(lib: Any, path: Path, dim: int) -> tuple[Any, np.ndarray]:
    """The graph saved by :func:`write_graph` and its (N, dim) float32 vectors.

    Raises:
        ValueError: the file is not such a state, or its parts disagree (sizes, a neighbour id out of range).
        OSError, KeyError: it does not read.
    """
    with np.load(path, allow_pickle=False) as saved:
        params = json.loads(str(saved["params"]))
        arrays = {k: saved[k] for k in _ARRAYS}
    vectors = _check(params, arrays, dim)
    graph = lib.Index.__new__(lib.Index)
    graph.__setstate__(({**params, **arrays},))
    return graph, vectors


def _check(params: dict[str, Any], arrays: dict[str, np.ndarray], dim: int) -> np.ndarray:
    """Raises ValueError unless hnswlib can take the state safely; returns the vectors of its rows."""
    for name, dtype in _ARRAYS.items():
        if arrays[name].dtype != dtype or arrays[name].ndim != 1:
            raise ValueError(f"hnswlib state: {name} is {arrays[name].dtype} {arrays[name].shape}")
    if params.get("space") != "ip" or params.get("dim") != dim or not params.get("index_inited"):
        raise ValueError(f"hnswlib state of space {params.get('space')!r}, dim {params.get('dim')}; want 'ip', {dim}")
    n, size = int(params["cur_element_count"]), int(params["size_data_per_element"])
    links0, max_m0, max_m = int(params["offset_data"]), int(params["max_M0"]), int(params["max_M"])
    levels = arrays["element_levels"]
    if (
        int(params["max_elements"]) != n
        or links0 != 4 * (max_m0 + 1)
        or int(params["label_offset"]) != links0 + 4 * dim
        or size != links0 + 4 * dim + 8
        or int(params["size_links_per_element"]) != 4 * (max_m + 1)
        or int(params["offset_level0"]) != 0
        or arrays["data_level0"].size != n * size
        or levels.size != n
        or arrays["label_lookup_external"].size != n
        or arrays["label_lookup_internal"].size != n
    ):
        raise ValueError(f"hnswlib state: sizes disagree for {n} elements of {size} bytes")
    if n and (
        levels.min() < 0
        or levels.max() > int(params["max_level"])
        or not 0 <= int(params["enterpoint_node"]) < n
        or arrays["label_lookup_internal"].max() >= n
    ):
        raise ValueError("hnswlib state: a level, the entry point or a label is out of range")
    upper = arrays["link_lists"]
    if upper.size != int(levels.sum()) * int(params["size_links_per_element"]):
        raise ValueError(f"hnswlib state: {upper.size} bytes of upper links for {int(levels.sum())} lists")
    rows = arrays["data_level0"].reshape(n, size)
    _check_links(rows[:, :links0], max_m0, n)
    _check_links(upper.reshape(-1, 4 * (max_m + 1)), max_m, n)
    return np.ascontiguousarray(rows[:, links0 : links0 + 4 * dim]).view(np.float32)


def _check_links(lists: np.ndarray, width: int, n: int) -> None:
    """Each (count, ``width`` ids) list: at most ``width`` links, each to an element below ``n``."""
    if not len(lists):
        return
    words = np.ascontiguousarray(lists).view(np.uint32)
    counts = words[:, 0] & 0xFFFF
    if counts.max() > width:
        raise ValueError(f"hnswlib state: a list of {counts.max()} links, at most {width}")
    used = np.arange(width) < counts[:, None]
    if (words[:, 1:][used] >= n).any():
        raise ValueError("hnswlib state: a link to an element that does not exist")
