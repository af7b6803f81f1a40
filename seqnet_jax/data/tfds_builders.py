"""TFDS builders for CUHK-SYSU, PRW and datasets in our format ("custom"), prepared from their
folders.

No TensorFlow needed: the builders write ``array_record`` files and are read back through
``as_data_source()`` (random access) with images decoded by PIL. This is the only module of the
package that imports ``tensorflow_datasets``; nothing imports it at package import time.

What is stored (``DATA_DIR/<cuhk_sysu|prw>/1.0.0/``; a custom dataset in
``DATA_DIR/custom/<name>_<fingerprint>/1.0.0/``, one builder config per annotation file and
protocol parameters, so several custom datasets share a ``DATA_DIR``):

* Splits ``train``, ``gallery`` and ``query``, one example per image (per query for ``query``), in
  the reader's order (shuffling disabled, integer keys): example ``i`` of ``gallery`` is
  ``dataset.gallery[i]``, so protocol gallery indices stay valid. Features: ``image`` (the
  original JPEG bytes, re-encoded only when not an RGB JPEG), ``image/filename``, ``boxes``
  ``float32 (N, 4)`` x1, y1, x2, y2, ``pids`` ``int32 (N,)`` (``1..L`` / test ids /
  ``UNLABELED_PID``), ``cam_id`` ``int32`` (-1 for CUHK-SYSU). A query example holds the query
  image with the query box and pid only (``N = 1``).
* The evaluation protocols and every annotation travel as builder metadata, written atomically
  with the prepared data: ``metadata.json`` (dataset name, ``num_train_pids``, reader stats,
  protocol names / sizes / rules) and ``person_search.npz`` (per-split names, boxes, pids, camera
  ids and image sizes; query boxes / pids; for each explicit protocol such as ``TestG100``: the
  per-query gallery indices and query-person boxes, flattened with offsets).
  ``load_tfds_dataset`` turns them back into the ``PersonSearchDataset`` the readers return, with
  ``load_image`` reading from the array_record files (the raw folder is no longer needed).

Preparation reads the raw folder with the reader (``check_images="decode"``: every image is
decoded once, so corrupt files are found at preparation time) and never writes into it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from seqnet_jax import progress
from seqnet_jax.data import _reader_utils as ru
from seqnet_jax.data import cuhk_sysu, custom, prw
from seqnet_jax.data.types import (
    ImageAnnotation,
    PersonSearchDataset,
    Query,
    SearchProtocol,
)

__all__ = [
    "SPLITS",
    "CuhkSysu",
    "Custom",
    "PersonSearchMetadata",
    "PersonSearchSource",
    "Prw",
    "TfdsImageLoader",
    "get_builder",
    "load_tfds_dataset",
    "load_tfds_split",
]

SPLITS = ("train", "gallery", "query")
_NPZ_NAME = "person_search.npz"
_JSON_NAME = "metadata.json"  # the name tfds looks for before calling ``load_metadata``
_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------
# Metadata: the PersonSearchDataset without images.


def _dataset_to_arrays(ds: PersonSearchDataset) -> tuple:
    """``PersonSearchDataset`` → (JSON-able header, dict of numpy arrays)."""
    arrays: dict = {}
    for split in ("train", "gallery"):
        anns = getattr(ds, split)
        counts = [len(a.boxes) for a in anns]
        arrays[f"{split}_names"] = np.array([a.name for a in anns], dtype=str)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        arrays[f"{split}_boxes"] = (
            np.concatenate([a.boxes for a in anns]).astype(np.float32)
            if anns
            else np.zeros((0, 4), np.float32)
        ).reshape(-1, 4)
        arrays[f"{split}_pids"] = (
            np.concatenate([a.pids for a in anns]).astype(np.int32)
            if anns
            else np.zeros((0,), np.int32)
        )
        arrays[f"{split}_cam_ids"] = np.array([a.cam_id for a in anns], np.int32)
        arrays[f"{split}_hw"] = np.array([[a.height, a.width] for a in anns], np.int32).reshape(
            -1, 2
        )
    arrays["query_names"] = np.array([q.name for q in ds.queries], dtype=str)
    arrays["query_boxes"] = np.array([q.box for q in ds.queries], np.float32).reshape(-1, 4)
    arrays["query_pids"] = np.array([q.pid for q in ds.queries], np.int32)
    arrays["query_cam_ids"] = np.array([q.cam_id for q in ds.queries], np.int32)
    protocols = []
    for k, p in enumerate(ds.protocols):
        explicit = p.gallery_indices is not None
        protocols.append(
            {
                "name": p.name,
                "gallery_size": int(p.gallery_size),
                "rule": p.rule,
                "explicit": explicit,
            }
        )
        if explicit:
            idx = [np.asarray(i, np.int32).reshape(-1) for i in p.gallery_indices]
            gt = [np.asarray(g, np.float32).reshape(-1, 4) for g in p.gt_boxes]
            arrays[f"protocol{k}_offsets"] = np.concatenate(
                [[0], np.cumsum([len(i) for i in idx])]
            ).astype(np.int64)
            arrays[f"protocol{k}_indices"] = (
                np.concatenate(idx) if idx else np.zeros((0,), np.int32)
            )
            arrays[f"protocol{k}_gt"] = np.concatenate(gt) if gt else np.zeros((0, 4), np.float32)
    header = {
        "format_version": _FORMAT_VERSION,
        "name": ds.name,
        "num_train_pids": int(ds.num_train_pids),
        "cbgm_k1": int(ds.cbgm_k1),
        "cbgm_k2": int(ds.cbgm_k2),
        "protocols": protocols,
        "stats": ds.stats,
    }
    return header, arrays


def _split_offsets(flat: np.ndarray, offsets: np.ndarray) -> list:
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def _dataset_from_arrays(header: dict, arrays) -> PersonSearchDataset:
    """Inverse of ``_dataset_to_arrays`` (``load_image`` left ``None``)."""
    if header.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"unsupported person-search metadata version {header.get('format_version')}"
        )
    splits = {}
    for split in ("train", "gallery"):
        off = arrays[f"{split}_offsets"]
        boxes = _split_offsets(arrays[f"{split}_boxes"], off)
        pids = _split_offsets(arrays[f"{split}_pids"], off)
        splits[split] = [
            ImageAnnotation(str(n), b.copy(), p.copy(), int(c), int(hw[0]), int(hw[1]))
            for n, b, p, c, hw in zip(
                arrays[f"{split}_names"],
                boxes,
                pids,
                arrays[f"{split}_cam_ids"],
                arrays[f"{split}_hw"],
                strict=True,
            )
        ]
    queries = [
        Query(str(n), b.copy(), int(p), int(c))
        for n, b, p, c in zip(
            arrays["query_names"],
            arrays["query_boxes"],
            arrays["query_pids"],
            arrays["query_cam_ids"],
            strict=True,
        )
    ]
    protocols = []
    for k, p in enumerate(header["protocols"]):
        if p["explicit"]:
            off = arrays[f"protocol{k}_offsets"]
            protocols.append(
                SearchProtocol(
                    p["name"],
                    p["gallery_size"],
                    # Views into one flat array each (TestG4000 alone is 11.6M entries).
                    _split_offsets(arrays[f"protocol{k}_indices"], off),
                    _split_offsets(arrays[f"protocol{k}_gt"], off),
                    rule=p["rule"],
                )
            )
        else:
            protocols.append(SearchProtocol(p["name"], p["gallery_size"], rule=p["rule"]))
    return PersonSearchDataset(
        name=header["name"],
        train=splits["train"],
        gallery=splits["gallery"],
        queries=queries,
        protocols=protocols,
        num_train_pids=header["num_train_pids"],
        stats=header.get("stats", {}),
        **_cbgm_defaults(header),
    )


def _cbgm_defaults(header: dict) -> dict:
    """The CBGM parameters stored with the data, else those of the reader module of that name
    (data prepared before they were stored)."""
    if "cbgm_k1" in header and "cbgm_k2" in header:
        return {"cbgm_k1": int(header["cbgm_k1"]), "cbgm_k2": int(header["cbgm_k2"])}
    dataset_name = header["name"]
    for module in (cuhk_sysu, prw):
        if dataset_name == module.DATASET_NAME:
            return {"cbgm_k1": module.CBGM_K1, "cbgm_k2": module.CBGM_K2}
    return {}


class PersonSearchMetadata(tfds.core.Metadata):
    """Builder metadata holding the annotations and protocols (``metadata.json`` + npz).

    ``self["dataset"]`` is a ``PersonSearchDataset`` without ``load_image`` once prepared or
    loaded.
    """

    def save_metadata(self, data_dir):
        """Writes ``metadata.json`` and ``person_search.npz`` into ``data_dir``."""
        ds = self.get("dataset")
        if ds is None:
            return
        header, arrays = _dataset_to_arrays(ds)
        data_dir = epath.Path(data_dir)
        with (data_dir / _NPZ_NAME).open("wb") as f:
            np.savez_compressed(f, **arrays)
        (data_dir / _JSON_NAME).write_text(json.dumps(header))

    def load_metadata(self, data_dir):
        """Reads what ``save_metadata`` wrote."""
        data_dir = epath.Path(data_dir)
        header = json.loads((data_dir / _JSON_NAME).read_text())
        with (data_dir / _NPZ_NAME).open("rb") as f:
            with np.load(f, allow_pickle=False) as arrays:
                self["dataset"] = _dataset_from_arrays(header, arrays)


# ------------------------------------------------------------------------------------------------
# Builders.


def _rgb_jpeg_bytes(path: Path) -> bytes:
    """The file's bytes when it is an RGB JPEG, else the image re-encoded as one (quality 95)."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG" and img.mode == "RGB":
                return data
            buf = io.BytesIO()
            img.convert("RGB").save(buf, "JPEG", quality=95)
            return buf.getvalue()
    except Exception as e:
        raise ru.ImageReadError(f"cannot read image {path}: {e}") from e


class _PersonSearchBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: reads ``manual_dir`` with the dataset's reader, writes three splits."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds derives ``code_path`` (where it would look for ``checksums.tsv``) from the package;
    # for a builder inside a regular package that computation needs the ``importlib_resources``
    # backport, which is not a tfds dependency. Nothing is downloaded here, so set it directly.
    code_path = epath.Path(__file__)
    RELEASE_NOTES = {"1.0.0": "Initial release (seqnet-jax)."}
    _reader = None  # staticmethod(read_xxx)
    _hint = ""
    _homepage = ""

    def __init__(
        self,
        *,
        skip_bad_images: bool = False,
        check_images: str = "decode",
        reader_kwargs: Optional[dict] = None,
        **kwargs,
    ):
        """Args as ``tfds.core.GeneratorBasedBuilder``, plus the reader's ``skip_bad_images``,
        ``check_images`` and further keyword arguments (used only while preparing)."""
        self._skip_bad_images = skip_bad_images
        self._check_images = check_images
        self._reader_kwargs = dict(reader_kwargs or {})
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "image/filename": tfds.features.Text(),
                    "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                    "pids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "cam_id": tfds.features.Tensor(shape=(), dtype=np.int32),
                }
            ),
            homepage=self._homepage,
            disable_shuffling=True,  # keep the reader's order: protocols index the gallery split
            metadata=PersonSearchMetadata(),
        )

    def _split_generators(self, dl_manager):
        ds = type(self)._reader(
            dl_manager.manual_dir,
            skip_bad_images=self._skip_bad_images,
            check_images=self._check_images,
            **self._reader_kwargs,
        )
        self.info.metadata["dataset"] = ds
        return {split: self._generate_examples(ds, split) for split in SPLITS}

    def _generate_examples(self, ds: PersonSearchDataset, split: str):
        folder = ds.load_image.folder
        items = ds.queries if split == "query" else getattr(ds, split)
        items = progress.progress(items, desc=f"preparing {self.name} {split}", unit="img")
        if split == "query":
            for i, q in enumerate(items):
                yield (
                    i,
                    {
                        "image": _rgb_jpeg_bytes(folder / q.name),
                        "image/filename": q.name,
                        "boxes": np.asarray(q.box, np.float32).reshape(1, 4),
                        "pids": np.array([q.pid], np.int32),
                        "cam_id": np.int32(q.cam_id),
                    },
                )
            return
        for i, a in enumerate(items):
            yield (
                i,
                {
                    "image": _rgb_jpeg_bytes(folder / a.name),
                    "image/filename": a.name,
                    "boxes": np.asarray(a.boxes, np.float32).reshape(-1, 4),
                    "pids": np.asarray(a.pids, np.int32).reshape(-1),
                    "cam_id": np.int32(a.cam_id),
                },
            )


class CuhkSysu(_PersonSearchBuilder, skip_registration=True):
    """CUHK-SYSU person search (18,184 images, 8,432 identities), from the official archive."""

    name = "cuhk_sysu"
    MANUAL_DOWNLOAD_INSTRUCTIONS = cuhk_sysu.DOWNLOAD_HINT + " Pass that folder as manual_dir."
    _reader = staticmethod(cuhk_sysu.read_cuhk_sysu)
    _hint = cuhk_sysu.DOWNLOAD_HINT
    _homepage = "http://www.ee.cuhk.edu.hk/~xgwang/PS/dataset.html"


class Prw(_PersonSearchBuilder, skip_registration=True):
    """PRW person search (11,816 frames, 6 cameras, 932 identities), from the official archive."""

    name = "prw"
    MANUAL_DOWNLOAD_INSTRUCTIONS = prw.DOWNLOAD_HINT + " Pass that folder as manual_dir."
    _reader = staticmethod(prw.read_prw)
    _hint = prw.DOWNLOAD_HINT
    _homepage = "https://github.com/liangzheng06/PRW-baseline"


class Custom(_PersonSearchBuilder, skip_registration=True):
    """A person-search dataset in the seqnet-jax format (``seqnet_jax/data/custom.py``).

    One builder config per dataset: its name is the dataset's name and the fingerprint of its
    annotation file and protocol parameters (``custom_config``).
    """

    name = "custom"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the dataset folder (annotations.json + images/) as manual_dir."
    )
    _reader = staticmethod(custom.read_custom)
    _hint = "The folder must hold annotations.json and images/ (README: 'Your own dataset')."
    _homepage = ""


_BUILDERS = {"cuhk_sysu": CuhkSysu, "prw": Prw, "custom": Custom}
_MARKERS = {"cuhk_sysu": cuhk_sysu._MARKERS, "prw": prw._MARKERS}


def custom_config(root: os.PathLike | str, reader_kwargs: Optional[dict] = None):
    """``(BuilderConfig, manual_dir, reader kwargs)`` of the custom dataset at ``root`` (its
    folder or annotation file): the config name is ``<name>_<fingerprint[:12]>``."""
    kw = dict(reader_kwargs or {})
    path = custom.locate(root, kw.get("annotations"))
    doc, problems = custom.read_document(path)
    if any(p.severity == "error" for p in problems):
        raise custom.FormatError(custom._format_errors(path, problems))
    fp = custom.fingerprint(
        doc.sha1,
        kw.get("protocol_seed", custom.DEFAULT_PROTOCOL_SEED),
        kw.get("gallery_sizes", custom.DEFAULT_GALLERY_SIZES),
        kw.get("skip_bad_images", False),
    )
    slug = "".join(c if c.isalnum() else "_" for c in doc.name.lower()).strip("_") or "custom"
    kw["annotations"] = path.name
    config = tfds.core.BuilderConfig(name=f"{slug[:40]}_{fp[:12]}")
    return config, path.parent, kw


def _prepared_custom_configs(data_dir) -> list:
    base = epath.Path(data_dir) / Custom.name
    if not base.exists():
        return []
    return sorted(
        p.name for p in base.iterdir() if (p / str(Custom.VERSION) / "dataset_info.json").exists()
    )


def _builder_key(name: str) -> str:
    key = name.lower().replace("-", "_")
    if key not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(_BUILDERS)}")
    return key


def get_builder(
    name: str,
    data_dir: os.PathLike | str,
    manual_dir: Optional[os.PathLike | str] = None,
    *,
    skip_bad_images: bool = False,
    check_images: str = "decode",
    reader_kwargs: Optional[dict] = None,
    config_name: Optional[str] = None,
) -> _PersonSearchBuilder:
    """The builder for ``name`` (``"cuhk_sysu"`` / ``"CUHK-SYSU"`` / ``"prw"`` / ``"custom"``),
    prepared.

    Prepares ``data_dir/<name>/1.0.0`` from ``manual_dir`` (the unpacked official folder) on first
    use; later calls reuse it and need no ``manual_dir``. ``skip_bad_images``, ``check_images``
    and ``reader_kwargs`` (further reader arguments, e.g. a custom dataset's ``protocol_seed``
    and ``gallery_sizes``) only matter while preparing; preparing reads every file of the raw
    folder once and decodes every image (``check_images="decode"``).

    A custom dataset is stored under a builder config named after its annotation file's
    fingerprint (``custom_config``): with ``manual_dir`` it is the config of that folder; without,
    ``config_name``, or the only custom dataset prepared in ``data_dir``.

    Raises:
      FileNotFoundError: not prepared and ``manual_dir`` missing, or files missing in it (the
        message names the expected path and the archive to download).
    """
    key = _builder_key(name)
    cls = _BUILDERS[key]
    kwargs = {}
    reader_kwargs = dict(reader_kwargs or {})
    if key == "custom":
        if manual_dir is not None:
            config, manual_dir, reader_kwargs = custom_config(
                manual_dir, dict(reader_kwargs, skip_bad_images=skip_bad_images)
            )
            reader_kwargs.pop("skip_bad_images")
        else:
            names = [config_name] if config_name else _prepared_custom_configs(data_dir)
            if len(names) != 1:
                raise FileNotFoundError(
                    f"{data_dir}: "
                    + (
                        f"several custom datasets are prepared ({names}): pass data.root"
                        if names
                        else "no custom dataset is prepared and no manual_dir was given: pass "
                        "the dataset folder (data.root)"
                    )
                )
            config = tfds.core.BuilderConfig(name=names[0])
        kwargs["config"] = config
    builder = cls(
        data_dir=os.fspath(data_dir),
        file_format="array_record",
        skip_bad_images=skip_bad_images,
        check_images=check_images,
        reader_kwargs=reader_kwargs,
        **kwargs,
    )
    if builder.is_prepared():
        return builder
    if manual_dir is None:
        raise FileNotFoundError(
            f"{builder.data_path} is not prepared and no manual_dir was given: pass the unpacked "
            f"official folder. {cls._hint}"
        )
    if key == "custom":
        root = Path(manual_dir)
    else:
        root = ru.resolve_root(manual_dir, _MARKERS[key], key, cls._hint)
    # TFDS's own tqdm bars redraw with carriage returns even in logs: the examples are counted
    # by seqnet_jax.progress instead (_generate_examples) while preparing.
    shown = getattr(tfds.core.utils.tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root))
        )
    finally:
        tfds.display_progress_bar(shown)
    return builder


class PersonSearchSource:
    """Random-access source over one prepared split (grain ``RandomAccessDataSource`` protocol).

    ``source[i]`` → ``{"image": uint8 (H, W, 3) RGB, "boxes": float32 (N, 4) x1y1x2y2,
    "pids": int32 (N,), "name": str, "cam_id": int}``; the image is decoded with PIL exactly as
    the readers' ``load_image``. Picklable (for worker processes).
    """

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        return _decode_record(self._source[index])

    def __getitems__(self, indices) -> list:
        return [_decode_record(r) for r in self._source.__getitems__(list(indices))]

    def __repr__(self) -> str:
        return f"PersonSearchSource({self._source!r})"


def _decode_record(rec: dict) -> dict:
    name = rec["image/filename"]
    name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
    try:
        with Image.open(io.BytesIO(rec["image"])) as img:
            image = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        raise ru.ImageReadError(f"cannot decode stored image {name}: {e}") from e
    return {
        "image": image,
        "boxes": np.asarray(rec["boxes"], np.float32).reshape(-1, 4),
        "pids": np.asarray(rec["pids"], np.int32).reshape(-1),
        "name": name,
        "cam_id": int(rec["cam_id"]),
    }


def _raw_source(builder, split: str):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})


def load_tfds_split(
    name: str,
    data_dir: os.PathLike | str,
    manual_dir: Optional[os.PathLike | str] = None,
    split: str = "train",
    *,
    skip_bad_images: bool = False,
    reader_kwargs: Optional[dict] = None,
) -> PersonSearchSource:
    """A random-access source over ``split`` (``"train"``, ``"gallery"`` or ``"query"``).

    Prepares the dataset first when needed (see ``get_builder``). Item ``i`` of ``"gallery"`` is
    ``load_tfds_dataset(...).gallery[i]``, so protocol gallery indices apply directly.
    """
    builder = get_builder(
        name, data_dir, manual_dir, skip_bad_images=skip_bad_images, reader_kwargs=reader_kwargs
    )
    return PersonSearchSource(_raw_source(builder, split))


class TfdsImageLoader:
    """Picklable ``load_image(split, name)`` reading images from the prepared array_record data."""

    def __init__(
        self,
        name: str,
        data_dir: os.PathLike | str,
        index: dict,
        config_name: Optional[str] = None,
    ):
        self.name = name
        self.data_dir = os.fspath(data_dir)
        self.config_name = config_name  # the builder config (custom datasets)
        self._index = index  # {split: {image name: example index}}
        self._sources: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_sources"] = {}
        return state

    def __call__(self, split: Optional[str], name: str) -> np.ndarray:
        order = ([split] if split in SPLITS else []) + ["gallery", "train", "query"]
        for s in order:
            i = self._index.get(s, {}).get(name)
            if i is not None:
                if s not in self._sources:
                    builder = get_builder(self.name, self.data_dir, config_name=self.config_name)
                    self._sources[s] = _raw_source(builder, s)
                return _decode_record(self._sources[s][i])["image"]
        raise ru.ImageReadError(f"image {name} is not in the prepared {self.name} data")


def load_tfds_dataset(
    name: str,
    data_dir: os.PathLike | str,
    manual_dir: Optional[os.PathLike | str] = None,
    *,
    skip_bad_images: bool = False,
    reader_kwargs: Optional[dict] = None,
) -> PersonSearchDataset:
    """The ``PersonSearchDataset`` (annotations, queries, protocols) of the prepared data.

    Equal to what ``read_cuhk_sysu`` / ``read_prw`` / ``read_custom`` return for the raw folder,
    except that ``load_image`` reads the images from the prepared array_record files.
    """
    builder = get_builder(
        name, data_dir, manual_dir, skip_bad_images=skip_bad_images, reader_kwargs=reader_kwargs
    )
    meta = builder.info.metadata
    if meta is None or "dataset" not in meta:
        raise FileNotFoundError(
            f"{builder.data_path} has no {_NPZ_NAME}/{_JSON_NAME}: prepare it with this module"
        )
    ds = meta["dataset"]
    index = {
        "train": {a.name: i for i, a in reversed(list(enumerate(ds.train)))},
        "gallery": {a.name: i for i, a in reversed(list(enumerate(ds.gallery)))},
        "query": {q.name: i for i, q in reversed(list(enumerate(ds.queries)))},
    }
    config = builder.builder_config.name if builder.builder_config is not None else None
    loader = TfdsImageLoader(builder.name, data_dir, index, config_name=config)
    return dataclasses.replace(ds, load_image=loader)
