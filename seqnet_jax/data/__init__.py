"""Datasets (CUHK-SYSU, PRW, built-in synthetic), transforms and the input pipeline."""

from __future__ import annotations


def build_dataset(config):
    """The ``PersonSearchDataset`` named by ``config.data.dataset``."""
    d = config.data
    if d.dataset == "synthetic":
        from seqnet_jax.data.synthetic import make_synthetic_dataset

        return make_synthetic_dataset(seed=config.seed, **d.synthetic.to_dict())
    if d.dataset in ("cuhk_sysu", "prw") and d.tfds_data_dir:
        from seqnet_jax.data.tfds_builders import load_tfds_dataset  # tfds only on this path

        return load_tfds_dataset(
            d.dataset, d.tfds_data_dir, d.root, skip_bad_images=d.skip_bad_images
        )
    if d.dataset == "cuhk_sysu":
        from seqnet_jax.data.cuhk_sysu import load_cuhk_sysu

        return load_cuhk_sysu(d.root, skip_bad_images=d.skip_bad_images)
    if d.dataset == "prw":
        from seqnet_jax.data.prw import load_prw

        return load_prw(d.root, skip_bad_images=d.skip_bad_images)
    raise ValueError(
        f"data.dataset must be one of 'cuhk_sysu', 'prw', 'synthetic'; got {d.dataset!r}"
    )
