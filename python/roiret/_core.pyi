# Type stub of the native module roiret._core (kept in sync by tests/test_stub.py).
from os import PathLike
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, bytes, PathLike]
_IntArray = Union[npt.NDArray[np.integer], Sequence[int]]
_NumArray = Union[npt.NDArray[np.number], Sequence[float]]

INVERTED_FILE_FORMAT_VERSION: int

def simd_level() -> str: ...
def detected_simd_level() -> str: ...
def supported_simd_levels() -> list[str]: ...
def set_simd_level(level: str) -> str: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def crc32(data: bytes, crc: int = 0) -> int: ...
def pack_codes(x: npt.NDArray[np.floating], threads: int = 0) -> npt.NDArray[np.uint64]: ...
def hamming_matrix(
    a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64], nbits: Optional[int] = None, threads: int = 0
) -> npt.NDArray[np.uint32]: ...
def hamming_knn(
    q: npt.NDArray[np.uint64],
    db: npt.NDArray[np.uint64],
    k: int,
    nbits: Optional[int] = None,
    threads: int = 0,
) -> Tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]: ...
def cross_match(
    q: npt.NDArray[np.uint64],
    db: npt.NDArray[np.uint64],
    offsets: npt.NDArray[np.int64],
    nbits: int,
    query_mask: Optional[npt.NDArray[np.bool_]] = None,
    images: Optional[_IntArray] = None,
    threads: int = 0,
) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
def select_rois(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    image_sizes: npt.NDArray[np.float32],
    K: int,
    t_min: float,
    t_rate: float,
    t_iou: float,
    threads: int = 0,
) -> npt.NDArray[np.int64]: ...
def spatial_verify(
    query_words: npt.NDArray[np.uint32],
    query_xy: npt.NDArray[np.float32],
    query_sizes: npt.NDArray[np.float32],
    query_angles: npt.NDArray[np.float32],
    db_words: npt.NDArray[np.uint32],
    db_xy: npt.NDArray[np.uint16],
    db_scales: npt.NDArray[np.uint8],
    db_angles: npt.NDArray[np.uint8],
    db_offsets: npt.NDArray[np.int64],
    db_sides: npt.NDArray[np.float32],
    rows: _IntArray,
    max_per_word: int,
    max_correspondences: int,
    inlier_threshold: float,
    scale_tolerance: float,
    angle_tolerance: float,
    lo_iterations: int,
    threads: int = 0,
) -> Tuple[npt.NDArray[np.int32], npt.NDArray[np.float64], npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...

class InvertedFile:
    def __init__(self, vocab_size: int) -> None: ...
    def add(
        self,
        image_ids: _IntArray,
        offsets: _IntArray,
        words: _IntArray,
        counts: Optional[_NumArray] = None,
    ) -> None: ...
    def search(
        self, words: _IntArray, counts: Optional[_NumArray] = None, top: int = 100, threads: int = 0
    ) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    def search_exact(
        self, words: _IntArray, counts: Optional[_NumArray] = None, top: int = 100, threads: int = 0
    ) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
    def set_collection_stats(self, n_docs: int, df: _IntArray) -> None: ...
    def clear_collection_stats(self) -> None: ...
    @property
    def has_collection_stats(self) -> bool: ...
    @property
    def stats_documents(self) -> int: ...
    def search_batch(
        self,
        offsets: _IntArray,
        words: _IntArray,
        counts: Optional[_NumArray] = None,
        top: int = 100,
        threads: int = 0,
    ) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    def remove(self, image_ids: _IntArray) -> int: ...
    def __len__(self) -> int: ...
    def __contains__(self, image_id: int) -> bool: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def num_postings(self) -> int: ...
    def memory_bytes(self) -> int: ...
    def ids(self) -> npt.NDArray[np.int64]: ...
    def document_frequencies(self) -> npt.NDArray[np.uint32]: ...
    def idf(self) -> npt.NDArray[np.float64]: ...
    def save(self, path: _Path) -> None: ...
    @staticmethod
    def load(path: _Path) -> InvertedFile: ...
