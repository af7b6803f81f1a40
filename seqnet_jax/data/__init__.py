"""Datasets (CUHK-SYSU, PRW, our own format "custom", built-in synthetic), transforms and the
input pipeline."""

from __future__ import annotations

DATASETS = ("cuhk_sysu", "prw", "custom", "synthetic")


def _custom_options(d) -> dict:
    """``read_custom`` keyword arguments from ``config.data.custom``."""
    c = d.get("custom") or {}
    return {
        "protocol_seed": int(c.get("protocol_seed", 0)),
        "gallery_sizes": tuple(int(s) for s in c.get("gallery_sizes", (50, 100))),
    }


def build_dataset(config):
    """The ``PersonSearchDataset`` named by ``config.data.dataset``.

    For ``custom`` the dataset at ``data.root`` is validated first
    (``seqnet_jax.data.validate.check``, unless ``data.custom.validate`` is False): errors stop
    here with the list of problems, warnings are logged.
    """
    d = config.data
    if d.dataset == "synthetic":
        from seqnet_jax.data.synthetic import make_synthetic_dataset

        return make_synthetic_dataset(seed=config.seed, **d.synthetic.to_dict())
    custom_kw = _custom_options(d) if d.dataset == "custom" else {}
    if d.dataset == "custom" and d.root:
        c = d.get("custom") or {}
        if c.get("validate", True):
            from seqnet_jax.data.validate import check

            check(
                d.root,
                check_images=c.get("check_images", "header"),
                bad_images_are_errors=not d.skip_bad_images,
                **custom_kw,
            )
    if d.dataset in ("cuhk_sysu", "prw", "custom") and d.tfds_data_dir:
        from seqnet_jax.data.tfds_builders import load_tfds_dataset  # tfds only on this path

        return load_tfds_dataset(
            d.dataset,
            d.tfds_data_dir,
            d.root or None,
            skip_bad_images=d.skip_bad_images,
            reader_kwargs=custom_kw or None,
        )
    if d.dataset == "cuhk_sysu":
        from seqnet_jax.data.cuhk_sysu import load_cuhk_sysu

        return load_cuhk_sysu(d.root, skip_bad_images=d.skip_bad_images)
    if d.dataset == "prw":
        from seqnet_jax.data.prw import load_prw

        return load_prw(d.root, skip_bad_images=d.skip_bad_images)
    if d.dataset == "custom":
        from seqnet_jax.data.custom import load_custom

        if not d.root:
            raise ValueError("data.dataset=custom needs data.root: the dataset folder")
        c = d.get("custom") or {}
        mode = c.get("check_images", "header")
        # The validator has just checked the images: the reader need not do it again, unless
        # it has to skip the bad ones.
        if c.get("validate", True) and not d.skip_bad_images:
            mode = "none"
        elif mode == "none" and d.skip_bad_images:
            mode = "header"
        return load_custom(
            d.root, skip_bad_images=d.skip_bad_images, check_images=mode, **custom_kw
        )
    raise ValueError(
        f"data.dataset must be one of {', '.join(map(repr, DATASETS))}; got {d.dataset!r}"
    )
