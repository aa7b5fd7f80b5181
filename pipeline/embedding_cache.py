"""SAM image embeddings of a frozen image encoder (`-freeze_encoder`), computed once per image and reused.

An embedding is keyed by content: the digest of the encoder (its class, configuration and every weight) and
the digest of the exact input tensor the encoder sees (pixel values, image size, augmentation). A change of
checkpoint, image size or image content therefore can never reuse a stale embedding, and an augmented image
is simply another key. Entries live in memory and, with a folder, on disk as
`<folder>/<encoder digest>/<arithmetic>/<image digest>.pt` (written atomically, read with weights_only=True), so
that later epochs and later runs on the same data reuse them. `<arithmetic>` names how the floats were computed
(`cpu-2t`: a CPU at 2 threads; `cuda`): another thread count rounds an embedding differently in its last bits,
and a run that read such entries would depend on which run filled the cache first, not only on its own seeds
and thread count (measured: two `python train.py` at 2 threads, one sharing the cache with a one-thread run,
ended 0.006 apart).

An embedding is always the encoder's eval-mode output, whatever mode the caller left it in. `TinyViT.train`
keeps its BatchNorm layers in eval, but a caller that switches modules one by one (`model.apply`, a loop over
`modules()`) puts them in training mode, where they use the batch's statistics: the entry — kept for every later
run — would hold a batch-dependent embedding 0.7 away from the true one under the same key (it happened once,
from a probe script, and silently moved every later run that read the cache).

A disk entry carries its shape, its key and a sha256 of the key and its values: an entry whose bytes changed, whose
shape is not the encoder's, that holds a non-finite value, or that was stored under another image's key (a file
copied or renamed: its values are another image's embedding) is never used — it is reported (warning), recomputed
and rewritten. A termination signal during a write ends as that signal (see `utils.interruption`), never as the
error a half-written archive raises.
Temporaries that a killed write left behind are removed when the cache opens (those older than a few minutes:
another run may be writing the same folder).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from utils import atomic_write, interruption, remove_stale_temporaries

log = logging.getLogger(__name__)

CACHE_FORMAT = "aespa-embeddings/3"  # part of every key: bump when the encoder's code or the entry format changes
STALE_TEMPORARY_S = 600  # a temporary older than this was left by a killed write
FOLDER_NAME = ".aespa_embeddings"  # under the data folder


def encoder_digest(encoder: nn.Module) -> str:
    """sha256 of the encoder's class, its configuration-bearing attributes and every parameter and buffer."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{type(encoder).__module__}.{type(encoder).__name__}".encode())
    for name, tensor in encoder.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and values (an encoder input 3xSxS, or a stored embedding)."""
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode() + t.numpy().tobytes()).hexdigest()


def arithmetic(encoder: nn.Module) -> str:
    """How the encoder's floats are computed where it is now: `cpu-<threads>t`, or the accelerator's type."""
    weight = next(encoder.parameters(), None)
    device = weight.device if weight is not None else torch.device("cpu")
    return f"cpu-{torch.get_num_threads()}t" if device.type == "cpu" else device.type


class EmbeddingCache:
    """`cache(images)` -> the encoder's embeddings BxCxGxG of Bx3xSxS images, each computed once.

    `folder` None keeps entries in memory only; memory holds the most recently used entries up to
    `memory_mb` (older ones are read back from disk, or recomputed without a folder). `hits`, `disk_hits` and
    `misses` count images.
    """

    def __init__(self, encoder: nn.Module, folder: str | Path | None = None, memory_mb: float = 2048):
        self.encoder = encoder
        self.digest = encoder_digest(encoder)
        self.folder = None if folder is None else Path(folder) / self.digest[:32] / arithmetic(encoder)
        self.memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.memory_bytes, self.memory_limit = 0, int(memory_mb * 2**20)
        self.hits = self.disk_hits = self.misses = self.rejected = 0
        self.shape: tuple[int, ...] | None = None  # of one embedding, learnt from the encoder
        if self.folder is not None:
            remove_stale_temporaries(self.folder, older_than=STALE_TEMPORARY_S)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS images -> their embeddings BxCxGxG (eval mode, float32), from memory, disk or the encoder."""
        keys = [tensor_digest(image) for image in images]
        found: dict[int, torch.Tensor] = {}
        if self.shape is None:  # what a valid entry looks like: the encoder's output at this input size
            self.shape = tuple(self._encode(torch.zeros_like(images[:1])).shape[1:])
        for i, key in enumerate(keys):
            if key in self.memory:
                self.memory.move_to_end(key)
                found[i] = self.memory[key]
                self.hits += 1
            elif (entry := self._read(key)) is not None:
                found[i] = self._remember(key, entry)
                self.disk_hits += 1
        missing = [i for i in range(len(keys)) if i not in found]
        if missing:  # encoded together, in the batch's order
            for i, embedding in zip(missing, self._encode(images[missing])):
                found[i] = self._remember(keys[i], embedding.clone())
                self._write(keys[i], found[i])
            self.misses += len(missing)
        return torch.stack([found[i] for i in range(len(keys))]).to(images.device)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's eval-mode output in float32 on the CPU, whatever the caller's mode and autocast; the
        encoder is given back in the mode it was found in."""
        training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.autocast(images.device.type, enabled=False):
                return self.encoder(images).float().cpu()
        finally:
            self.encoder.train(training)

    def _remember(self, key: str, embedding: torch.Tensor) -> torch.Tensor:
        self.memory[key] = embedding
        self.memory_bytes += embedding.numel() * embedding.element_size()
        while self.memory_bytes > self.memory_limit and len(self.memory) > 1:
            _, old = self.memory.popitem(last=False)
            self.memory_bytes -= old.numel() * old.element_size()
        return embedding

    def _read(self, key: str) -> torch.Tensor | None:
        """A disk entry that passes every check, else None (reported, then recomputed and rewritten)."""
        path = self.folder / f"{key}.pt" if self.folder is not None else None
        if path is None or not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # the unpickler raises anything on garbage; a signal while reading stays one
            if (stop := interruption(err)) is not None:
                raise stop from None
            problem = f"unreadable ({type(err).__name__})"
        else:
            problem = entry_problem(entry, key, self.shape)
        if problem is None:
            return entry["embedding"]
        log.warning("%s: cached embedding %s; recomputing it", path, problem)
        self.rejected += 1
        return None

    def _write(self, key: str, embedding: torch.Tensor) -> None:
        if self.folder is None:
            return
        entry = {
            "embedding": embedding,
            "shape": list(embedding.shape),
            "key": key,
            "sha256": entry_checksum(key, embedding),
        }
        try:
            atomic_write(self.folder / f"{key}.pt", lambda f: torch.save(entry, f))
        except OSError as err:  # e.g. a read-only data folder: keep going in memory, say so once
            log.warning("%s: cannot write cached embeddings (%s); keeping them in memory only", self.folder, err)
            self.folder = None

    def summary(self) -> str:
        where = f"memory and {self.folder}" if self.folder is not None else "memory"
        return (
            f"embedding cache ({where}): {self.misses} computed, {self.hits} reused from memory, "
            f"{self.disk_hits} from disk, {self.rejected} damaged entries recomputed"
        )


def entry_checksum(key: str, embedding: torch.Tensor) -> str:
    """sha256 binding an entry's values to its key (the image digest it is stored under)."""
    return hashlib.sha256(f"{key}|{tensor_digest(embedding)}".encode()).hexdigest()


def entry_problem(entry: object, key: str, shape: tuple[int, ...] | None) -> str | None:
    """Why a disk entry loaded for `key` must not be used (one phrase), or None."""
    if not (isinstance(entry, dict) and isinstance(entry.get("embedding"), torch.Tensor) and "key" in entry):
        return "is not an entry of this cache format"
    t = entry["embedding"]
    if list(t.shape) != entry.get("shape") or (shape is not None and tuple(t.shape) != tuple(shape)):
        return f"has shape {tuple(t.shape)}, the encoder's is {shape}"
    if entry.get("key") != key:
        return f"was stored for another image (key {str(entry['key'])[:16]}...)"
    if t.dtype != torch.float32 or entry_checksum(key, t) != entry.get("sha256"):
        return "does not match its checksum (its bytes changed)"
    if not bool(torch.isfinite(t).all()):
        return "holds non-finite values"
    return None
