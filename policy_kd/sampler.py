"""Minibatches of buffer fields as torch tensors (``Sampler``), from RAM or the memory-mapped segments."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from policy_kd.errors import PolicyKDError

if TYPE_CHECKING:
    from policy_kd.buffer import Buffer


class Sampler:
    """Minibatches (with replacement) of buffer fields as torch tensors, with no per-sample Python.

    Rows are drawn uniformly over all rows of ``buffers`` (one buffer or several: e.g. a teacher-driven
    buffer plus DAgger rounds), or, with ``source_weights``, each row's *source* (one recording: a
    ``(buffer, source)`` pair, in buffer order then source order) is drawn with those probabilities and
    the row uniformly within it. ``in_memory=True`` copies the fields into RAM once (fastest); ``False``
    gathers each batch from the memory-mapped segments (the OS page cache holds what fits, so a buffer
    larger than RAM works); ``None`` picks in-memory when the fields take less than ``max_ram_bytes``.
    """

    def __init__(
        self,
        buffers: Buffer | list[Buffer],
        names: tuple[str, ...],
        *,
        seed: int = 0,
        in_memory: bool | None = None,
        max_ram_bytes: int = 2 << 30,
        sources: tuple[int, ...] | None = None,
        source_weights: tuple[float, ...] | None = None,
        prefetch: bool = False,
    ):
        from policy_kd.buffer import Buffer  # here, not at the top: policy_kd.buffer re-exports Sampler

        buffers = [buffers] if isinstance(buffers, Buffer) else list(buffers)
        self._pool: Any = None
        self._pending: tuple[torch.Tensor, Any, int] | None = None  # (generator state before, future, size)
        self.names = names
        self.gen = torch.Generator().manual_seed(seed)
        segs = [
            (b, i, (bi, s["source"]))
            for bi, b in enumerate(buffers)
            for i, s in enumerate(b.segments)
            if sources is None or s["source"] in sources
        ]
        if not segs:
            raise PolicyKDError(f"buffer {buffers[0].path} has no rows from sources {sources}")
        # group segments by source so that each source's rows are one contiguous range
        segs.sort(key=lambda x: x[2])
        self.arrays = {k: [b.segment_array(i, k) for b, i, _ in segs] for k in names}
        sizes = np.array([b.segments[i]["rows"] for b, i, _ in segs], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.rows = int(self.offsets[-1])
        self.source_keys = sorted({key for _, _, key in segs})
        self.source_rows = np.array(
            [
                sum(int(n) for (_, _, key), n in zip(segs, sizes, strict=True) if key == k)
                for k in self.source_keys
            ]
        )
        self.source_starts = np.concatenate([[0], np.cumsum(self.source_rows)[:-1]])
        self.weights: torch.Tensor | None = None
        if source_weights is not None:
            if (
                len(source_weights) != len(self.source_keys)
                or min(source_weights) < 0
                or sum(source_weights) <= 0
            ):
                raise PolicyKDError(
                    f"--source-weights needs {len(self.source_keys)} non-negative numbers (one per recording, "
                    f"not all 0), got {list(source_weights)}"
                )
            self.weights = torch.tensor(source_weights, dtype=torch.float64)
        fields = buffers[0].fields
        self.stack = buffers[0].stack if "obs" in names else None
        if self.stack is not None:
            # stacked obs are rebuilt from per-frame rows: keep episode_step and each segment's n_envs
            self.arrays["episode_step"] = [b.segment_array(i, "episode_step") for b, i, _ in segs]
            self.seg_n_envs = np.array([b.segment_n_envs(i) for b, i, _ in segs], dtype=np.int64)
        nbytes = sum(self.rows * fields[k].row_bytes for k in self.arrays)
        self.in_memory = nbytes <= max_ram_bytes if in_memory is None else in_memory
        if self.in_memory:
            self.in_ram = {k: np.concatenate(v) for k, v in self.arrays.items()}
        elif prefetch:
            # numpy releases the GIL while it gathers rows, so the next batch's page-cache reads overlap
            # the training step's compute (as a DataLoader worker would, without a process)
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="policy_kd-sampler")

    def indices(self, batch_size: int) -> np.ndarray:
        """Global row indices of the next minibatch (advances the generator)."""
        if self.weights is None:
            return torch.randint(self.rows, (batch_size,), generator=self.gen).numpy()
        which = torch.multinomial(self.weights, batch_size, replacement=True, generator=self.gen).numpy()
        u = torch.rand(batch_size, generator=self.gen, dtype=torch.float64).numpy()
        within = np.minimum((u * self.source_rows[which]).astype(np.int64), self.source_rows[which] - 1)
        return self.source_starts[which] + within

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The next minibatch. With prefetching (memory-mapped only), the batch after it is gathered in a
        background thread while the caller trains on this one; the indices are still drawn here, in
        order, so the batches are the same as without prefetching."""
        if self._pool is None:
            return self._gather_batch(self.indices(batch_size))
        if self._pending is not None and self._pending[2] != batch_size:
            self.set_state(self._pending[0])  # un-draw the batch prefetched at another size
        if self._pending is None:
            self._pending = self._prefetch(batch_size)
        batch = self._pending[1].result()
        self._pending = self._prefetch(batch_size)
        return batch

    def _prefetch(self, batch_size: int) -> tuple[torch.Tensor, Any, int]:
        before = self.gen.get_state()
        return before, self._pool.submit(self._gather_batch, self.indices(batch_size)), batch_size

    def _gather_batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        if self.stack is not None:
            return self._sample_stacked(idx)
        if self.in_memory:
            # numpy's take gathers rows of small dtypes (uint8 frames) about twice as fast as tensor indexing
            return {k: torch.from_numpy(a.take(idx, axis=0)) for k, a in self.in_ram.items()}
        # Sorted indices read the memory maps front to back; one fancy-index per segment, not per sample.
        idx = np.sort(idx)
        return {k: torch.from_numpy(_gather(parts, self.offsets, idx)) for k, parts in self.arrays.items()}

    def _sample_stacked(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        assert self.stack is not None
        idx = np.sort(idx)
        n_envs = self.seg_n_envs[np.searchsorted(self.offsets, idx, side="right") - 1]
        out: dict[str, torch.Tensor] = {}
        if self.in_memory:
            obs = self.stack.rebuild(self.in_ram["obs"], self.in_ram["episode_step"], idx, n_envs)
            for k in self.names:
                if k != "obs":
                    out[k] = torch.from_numpy(self.in_ram[k].take(idx, axis=0))
        else:
            obs = self.stack.rebuild(
                _Concat(self.arrays["obs"], self.offsets), _Concat(self.arrays["episode_step"], self.offsets),
                idx, n_envs,
            )  # fmt: skip
            for k in self.names:
                if k != "obs":
                    out[k] = torch.from_numpy(_gather(self.arrays[k], self.offsets, idx))
        out["obs"] = torch.from_numpy(obs)
        return out

    def state(self) -> torch.Tensor:
        """The generator's state, to checkpoint (restore with ``set_state``) for bit-identical resumption;
        a batch prefetched but not yet returned is not counted as drawn."""
        return self._pending[0] if self._pending is not None else self.gen.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self._drop_pending()
        self.gen.set_state(state)

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending[1].result()
            self._pending = None

    def close(self) -> None:
        """Stop the prefetch thread (if any)."""
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class _Concat:
    """Row-indexable view of memory-mapped segments as one array (``view[sorted_rows]``), without copying."""

    def __init__(self, parts: list[np.ndarray], offsets: np.ndarray):
        self.parts, self.offsets, self.dtype = parts, offsets, parts[0].dtype

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return _gather(self.parts, self.offsets, idx)


def _gather(parts: list[np.ndarray], offsets: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted, global) of the concatenation of ``parts`` whose starts are ``offsets``."""
    bounds = np.searchsorted(idx, offsets)
    pieces = [
        parts[s][idx[bounds[s] : bounds[s + 1]] - offsets[s]]
        for s in range(len(parts))
        if bounds[s + 1] > bounds[s]
    ]
    return np.concatenate(pieces) if len(pieces) > 1 else np.asarray(pieces[0])
