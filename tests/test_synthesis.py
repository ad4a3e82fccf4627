"""Unit tests of the synthesis stage: VAE, tiled reconstruction, SuperMix, checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mschange.cli import main
from mschange.config import ConfigError, validate_config
from mschange.scancache import DiskArray, ScanCache
from mschange.synthesis import vae_training
from mschange.synthesis.reconstruction import TilingSettings, reconstruct_volume
from mschange.synthesis.steps import supermix_settings, supermix_step, tiling_settings
from mschange.synthesis.supermix import (
    SampleChoices,
    SuperMixSettings,
    draw_choices,
    replaced_superpixels,
    replay,
    sample_seed,
    superpixels,
    synthesise,
)
from mschange.synthesis.vae import Vae3d, VaeArchitecture, load_vae, save_vae, vae_loss
from mschange.synthesis.vae_training import (
    CropSampler,
    load_training_scans,
)

from .conftest import REPO, ellipsoid_phantom, oblique_affine

TINY_ARCHITECTURE = VaeArchitecture(encoder="maxpool", channels=(4, 8), latent_channels=2)
TINY_TILING = TilingSettings(tile_size=(16, 16, 8), overlap=4, margin=2)
SHAPE = (28, 32, 24)
SPACING = (2.0, 2.0, 2.0)


@pytest.fixture(scope="module")
def scan():
    """A textured phantom 'brain' with its mask and an oblique LPS affine."""
    image, mask = ellipsoid_phantom(SHAPE, SPACING)
    rng = np.random.default_rng(3)
    texture = rng.normal(0.0, 0.05, SHAPE)
    data = (image / image.max() + texture * mask).astype(np.float32)
    return data, mask.astype(bool), oblique_affine(SPACING)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return Vae3d(TINY_ARCHITECTURE).eval()


def test_both_encoders_reconstruct_the_input_shape():
    x = torch.rand(2, 1, 16, 24, 8)
    for encoder in ("maxpool", "strided"):
        model = Vae3d(VaeArchitecture(encoder=encoder, channels=(4, 8), latent_channels=3))
        reconstruction, mu, logvar = model(x)
        assert reconstruction.shape == x.shape
        assert mu.shape == logvar.shape == (2, 3, 4, 6, 2)  # 2 levels: 4x coarser latent
    strided = Vae3d(VaeArchitecture(encoder="strided", channels=(4, 8)))
    maxpool = Vae3d(VaeArchitecture(encoder="maxpool", channels=(4, 8)))
    # The strided encoder learns its downsampling: it has more parameters.
    assert sum(p.numel() for p in strided.parameters()) > sum(
        p.numel() for p in maxpool.parameters()
    )


def test_vae_loss_terms():
    target = torch.zeros(1, 1, 4, 4, 4)
    reconstruction = torch.full_like(target, 0.5)
    mu = torch.zeros(1, 2, 1, 1, 1)
    logvar = torch.zeros_like(mu)
    total, l1, kl = vae_loss(reconstruction, target, mu, logvar, kl_weight=0.1)
    assert l1.item() == pytest.approx(0.5)
    assert kl.item() == pytest.approx(0.0)  # N(0, I) has no divergence from N(0, I)
    total, _, kl = vae_loss(reconstruction, target, mu + 2.0, logvar, kl_weight=0.1)
    assert kl.item() == pytest.approx(2.0)  # 0.5 * mu^2
    assert total.item() == pytest.approx(0.5 + 0.1 * 2.0)


def test_vae_loss_goes_down_when_overfitting_a_tiny_batch():
    torch.manual_seed(1)
    model = Vae3d(TINY_ARCHITECTURE)
    # Smooth structure a bottleneck can learn (white noise it could not).
    grid = np.indices((16, 16, 8), dtype=np.float32)
    blobs = [
        np.exp(-((grid[0] - a) ** 2 + (grid[1] - b) ** 2 + 4 * (grid[2] - 4) ** 2) / 20)
        for a, b in ((5, 6), (10, 11))
    ]
    batch = torch.from_numpy(np.stack(blobs)[:, None])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        reconstruction, mu, logvar = model(batch)
        loss, _, _ = vae_loss(reconstruction, batch, mu, logvar, kl_weight=1e-3)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_vae_file_round_trip_is_safe_and_complete(tmp_path, tiny_vae):
    path = save_vae(tiny_vae, tmp_path / "vae.pt", training={"steps": 3})
    loaded, metadata = load_vae(path)
    assert metadata["architecture"]["channels"] == [4, 8]
    assert metadata["training"] == {"steps": 3}
    assert metadata["package_version"]
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.no_grad():
        expected = tiny_vae.decode(tiny_vae.encode(x)[0])
        assert torch.equal(loaded.decode(loaded.encode(x)[0]), expected)
    # weights_only loading: a file holding arbitrary objects is refused, in plain words
    # (the reader the detector's model file uses; more in tests/test_training_loop.py).
    torch.save({"kind": "mschange-vae", "evil": object()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="refuses to load it") as refused:
        load_vae(tmp_path / "bad.pt")
    assert "weights_only" not in str(refused.value)


def test_superpixels_cover_the_brain_only(scan):
    data, mask, affine = scan
    labels = superpixels(data, mask, affine, n_segments=40, compactness=0.1, iterations=10)
    assert labels.shape == data.shape
    assert (labels[~mask] == 0).all()
    assert (labels[mask] > 0).all()
    count = labels.max()
    assert set(np.unique(labels[mask])) == set(range(1, count + 1))  # consecutive ids
    assert 20 <= count <= 80  # about the requested number inside the brain


def test_share_of_replaced_superpixels_is_one_minus_tau():
    shares = [len(replaced_superpixels(1000, 0.98, seed)) / 1000 for seed in range(300)]
    assert np.mean(shares) == pytest.approx(0.02, abs=0.002)
    assert replaced_superpixels(50, 1.0, 0) == []
    assert replaced_superpixels(50, 0.0, 0) == list(range(1, 51))


def test_n_segments_are_log_uniform_in_range():
    settings = SuperMixSettings(n_segments=(200, 5000))
    drawn = np.array(
        [draw_choices(sample_seed(7, "s", k), settings).n_segments for k in range(600)]
    )
    assert drawn.min() >= 200 and drawn.max() <= 5000
    # log-uniform: the geometric midpoint (1000) splits the draws in half
    assert np.mean(drawn < 1000) == pytest.approx(0.5, abs=0.07)
    timepoints = {
        draw_choices(sample_seed(7, "s", k), settings).synthesised_timepoint for k in range(20)
    }
    assert timepoints == {"baseline", "followup"}


def _choices(n_segments=40):
    return SampleChoices(
        synthesised_timepoint="followup",
        n_segments=n_segments,
        latent_seed=11,
        replace_draws_seed=5,
    )


def test_supermix_label_is_exactly_the_replaced_region(scan, tiny_vae):
    data, mask, affine = scan
    settings = SuperMixSettings(tau=0.6, delta=5.0)
    sample = synthesise(data, mask, affine, tiny_vae, _choices(), settings, tiling=TINY_TILING)
    replaced = sample.record["replaced_superpixels"]
    assert replaced, "tau = 0.6 should replace some of 40 superpixels"
    expected = np.isin(sample.superpixel_labels, replaced)
    assert np.array_equal(sample.label.astype(bool), expected)
    assert sample.record["replaced_voxels"] == int(expected.sum())
    assert not (sample.label.astype(bool) & ~mask).any()
    changed = sample.label.astype(bool)
    assert np.array_equal(sample.synthesised[~changed], data[~changed])
    assert np.array_equal(sample.synthesised[changed], sample.reconstruction[changed])
    # The perturbed reconstruction differs from the scan, so the change is visible.
    assert np.abs(sample.synthesised - data)[changed].mean() > 0.01


def test_replayed_record_gives_identical_voxels(scan, tiny_vae):
    data, mask, affine = scan
    settings = SuperMixSettings(tau=0.8)
    sample = synthesise(data, mask, affine, tiny_vae, _choices(), settings, tiling=TINY_TILING)
    record = json.loads(json.dumps(sample.record))
    # A reconstruction computed beforehand (as the figure does) gives the same sample.
    reused = synthesise(
        data,
        mask,
        affine,
        tiny_vae,
        _choices(),
        settings,
        tiling=TINY_TILING,
        reconstruction=sample.reconstruction,
    )
    assert np.array_equal(reused.synthesised, sample.synthesised)
    again = replay(record, data, mask, affine, tiny_vae)
    assert np.array_equal(again.synthesised, sample.synthesised)
    assert np.array_equal(again.label, sample.label)
    other = synthesise(
        data,
        mask,
        affine,
        tiny_vae,
        SampleChoices("followup", 40, latent_seed=12, replace_draws_seed=5),
        settings,
        tiling=TINY_TILING,
    )
    assert not np.array_equal(other.reconstruction, sample.reconstruction)


def test_tiled_reconstruction_keeps_grid_and_orientation(scan, tiny_vae):
    data, mask, affine = scan
    reconstruction = reconstruct_volume(
        tiny_vae, data, mask, affine, seed=3, delta=5.0, tiling=TINY_TILING
    )
    assert reconstruction.shape == data.shape and reconstruction.dtype == np.float32
    assert np.isfinite(reconstruction).all()
    # Outside the brain's box (plus margin) the input is kept; inside it is the VAE's.
    small = np.zeros_like(mask)
    small[10:18, 10:20, 8:14] = True
    boxed = reconstruct_volume(tiny_vae, data, small, affine, seed=3, delta=5.0, tiling=TINY_TILING)
    inside = np.zeros_like(mask)
    inside[8:20, 8:22, 6:16] = True  # margin 2
    assert np.array_equal(boxed[~inside], data[~inside])
    assert not np.allclose(boxed[inside], data[inside], atol=1e-3)
    assert np.array_equal(
        reconstruction,
        reconstruct_volume(tiny_vae, data, mask, affine, seed=3, delta=5.0, tiling=TINY_TILING),
    )
    # The same head stored with its axes permuted and flipped gives the same voxels:
    # the network always sees RAS axis order.
    permuted = np.flip(np.transpose(data, (2, 0, 1)), axis=1).copy()
    permuted_mask = np.flip(np.transpose(mask, (2, 0, 1)), axis=1).copy()
    to_old = np.zeros((4, 4))  # new voxel (i, j, k) shows old voxel (27 - j, k, i)
    to_old[0, 1] = -1
    to_old[0, 3] = SHAPE[0] - 1
    to_old[1, 2] = 1
    to_old[2, 0] = 1
    to_old[3, 3] = 1
    permuted_affine = affine @ to_old
    again = reconstruct_volume(
        tiny_vae, permuted, permuted_mask, permuted_affine, seed=3, delta=5.0, tiling=TINY_TILING
    )
    restored = np.transpose(np.flip(again, axis=1), (1, 2, 0))
    np.testing.assert_allclose(restored, reconstruction, atol=1e-5)


def test_crops_are_ras_ordered_and_around_the_brain(tmp_path, scan):
    data, mask, affine = scan
    # Store the scan with its axes as (S, R, A): crops must still be (R, A, S) sized.
    permuted_affine = affine[:, [2, 0, 1, 3]]
    image = tmp_path / "scan.nii.gz"
    brain = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(data, (2, 0, 1)), permuted_affine), image)
    nib.save(
        nib.Nifti1Image(np.transpose(mask, (2, 0, 1)).astype(np.uint8), permuted_affine), brain
    )
    volumes, masks = load_training_scans([str(image)], [str(brain)])
    assert volumes[0].shape == SHAPE  # back in (R, A, S)-like order
    sampler = CropSampler(volumes, masks, (16, 8, 40), np.random.default_rng(0))
    batch = sampler.crop_batch(5)
    assert batch.shape == (5, 1, 16, 8, 40)  # 40 > 24: padded, not refused
    assert (batch.reshape(5, -1) > 0.2).any(axis=1).all()  # every crop shows brain


def _reference_crops(volumes, masks, crop_size, rng, batches, size):
    """The crops of the sampler as it was when it held every padded scan in memory."""
    crop = np.asarray(crop_size)
    padded, boxes = [], []
    for volume, mask in zip(volumes, masks, strict=True):
        padding = [(0, max(0, int(c) - s)) for c, s in zip(crop, volume.shape, strict=True)]
        padded.append(np.pad(volume, padding))
        where = np.nonzero(np.pad(mask, padding))
        boxes.append((np.array([w.min() for w in where]), np.array([w.max() for w in where])))
    out = []
    for _ in range(batches):
        batch = np.empty((size, 1, *crop), dtype=np.float32)
        for b in range(size):
            index = int(rng.integers(len(padded)))
            low, high = boxes[index]
            centre = rng.integers(low, high + 1)
            start = np.clip(centre - crop // 2, 0, np.array(padded[index].shape) - crop)
            batch[b, 0] = padded[index][
                tuple(slice(int(s), int(s + c)) for s, c in zip(start, crop, strict=True))
            ]
        out.append(batch)
    return out


@pytest.mark.parametrize("crop_size", [(16, 16, 8), (8, 32, 40), (40, 8, 8)])
def test_crops_from_the_disk_cache_equal_the_in_memory_crops(tmp_path, scan, crop_size):
    images, masks = _training_files(tmp_path, scan)
    # A scan with its brain off-centre, so that crops are clipped at the scan's edges.
    data, mask, affine = scan
    shifted = np.roll(mask, (-6, 7, 5), axis=(0, 1, 2))
    images.append(str(tmp_path / "scan_shifted.nii.gz"))
    masks.append(str(tmp_path / "mask_shifted.nii.gz"))
    nib.save(nib.Nifti1Image(np.where(shifted, data + 0.3, 0.0), affine), images[-1])
    nib.save(nib.Nifti1Image(shifted.astype(np.uint8), affine), masks[-1])
    # A small brain in the middle: crops reach only part of the scan, so the cache keeps
    # a region that does not start at the scan's corner.
    small = np.zeros_like(mask)
    small[10:18, 12:20, 9:15] = True
    images.append(str(tmp_path / "scan_small.nii.gz"))
    masks.append(str(tmp_path / "mask_small.nii.gz"))
    nib.save(nib.Nifti1Image(data - 0.2, affine), images[-1])
    nib.save(nib.Nifti1Image(small.astype(np.uint8), affine), masks[-1])
    volumes, brains = load_training_scans(images, masks)
    expected = _reference_crops(
        volumes, brains, crop_size, np.random.default_rng(7), batches=12, size=3
    )

    cache = ScanCache(tmp_path / "cache")
    on_disk = CropSampler.from_files(images, masks, crop_size, np.random.default_rng(7), cache)
    in_memory = CropSampler(volumes, brains, crop_size, np.random.default_rng(7))
    for batch in expected:
        np.testing.assert_array_equal(on_disk.crop_batch(3), batch)
        np.testing.assert_array_equal(in_memory.crop_batch(3), batch)
    # The disk sampler holds no voxels: each crop is read from the cache files.
    assert all(isinstance(source.array, DiskArray) for source in on_disk.sources)
    assert cache.built == 4 and len(list(cache.folder.glob("*.npy"))) == 4
    assert on_disk.sources[-1].offset.any()
    if os.path.exists("/proc/self/maps"):
        maps = Path("/proc/self/maps").read_text()
        assert not any(str(source.array.path) in maps for source in on_disk.sources)


def test_a_crop_source_keeps_only_what_crops_can_reach():
    volume = np.random.default_rng(0).random((20, 12, 40)).astype(np.float32)
    mask = np.zeros(volume.shape, bool)
    mask[5:15, 3:9, 10:21] = True
    source = vae_training.crop_source(volume, mask, (8, 16, 8))
    # x: centres 5..14 start crops at 1..10; y: 12 < 16 voxels, padded to 16; z: 6..16.
    assert source.offset.tolist() == [1, 0, 6] and source.shape.tolist() == [20, 16, 40]
    # Stored with the crop's thinnest side first (x, then z; stable for equal sizes).
    assert source.axes == (0, 2, 1) and source.array.shape == (17, 18, 16)
    region = np.transpose(source.array, (0, 2, 1))
    np.testing.assert_array_equal(region[:, :12], volume[1:18, :, 6:24])
    assert not region[:, 12:].any()
    np.testing.assert_array_equal(
        source.crop(np.array([3, 0, 10]), np.array([8, 16, 8]))[:, :12], volume[3:11, :, 10:18]
    )
    with pytest.raises(ValueError, match="empty brain mask"):
        vae_training.crop_source(volume, np.zeros_like(mask), (8, 8, 8))


def _training_files(tmp_path, scan):
    data, mask, affine = scan
    images, masks = [], []
    for index, shift in enumerate((0.0, 0.1)):
        images.append(str(tmp_path / f"scan{index}.nii.gz"))
        masks.append(str(tmp_path / f"mask{index}.nii.gz"))
        nib.save(nib.Nifti1Image(data + shift, affine), images[-1])
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), masks[-1])
    return images, masks


def test_supermix_step_writes_samples_on_the_input_grid(tmp_path, scan, tiny_vae):
    data, mask, affine = scan
    paths = {}
    for tp, shift in (("baseline", 0.05), ("followup", 0.0)):
        paths[tp] = tmp_path / f"{tp}.nii.gz"
        nib.save(nib.Nifti1Image(data + shift, affine), paths[tp])
        paths[f"{tp}_mask"] = tmp_path / f"{tp}_mask.nii.gz"
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), paths[f"{tp}_mask"])
    model = save_vae(tiny_vae, tmp_path / "vae.pt", training={})
    n = 4
    outputs = {
        kind: [tmp_path / f"s{k}_{kind}.nii.gz" for k in range(n)]
        for kind in ("synthesised", "reference", "label")
    }
    outputs["record"] = [tmp_path / f"s{k}.json" for k in range(n)]
    config = {
        "tau": 0.7,
        "n_segments": [20, 60],
        "delta": 5.0,
        "compactness": 0.1,
        "slic_iterations": 10,
        "tile_overlap": 4,
    }
    supermix_step(
        {"baseline": paths["baseline"], "followup": paths["followup"]},
        [paths["baseline_mask"], paths["followup_mask"]],
        model,
        outputs,
        subject="demo01",
        seed=42,
        settings=supermix_settings(config),
        tiling=tiling_settings((16, 16, 8), config),
        device="cpu",
        threads=1,
    )
    synthesised_tps = set()
    for k in range(n):
        record = json.loads(outputs["record"][k].read_text())
        assert record["seed_entropy"] == sample_seed(42, "demo01", k)
        synthesised_tps.add(record["synthesised_timepoint"])
        for kind in ("synthesised", "reference", "label"):
            image = nib.load(outputs[kind][k])
            assert image.shape == SHAPE
            np.testing.assert_allclose(image.affine, affine, atol=1e-5)
        reference = nib.load(outputs["reference"][k]).get_fdata()
        source = nib.load(paths[record["synthesised_timepoint"]]).get_fdata()
        other = nib.load(paths[record["reference_timepoint"]]).get_fdata()
        np.testing.assert_allclose(reference, other, atol=1e-6)  # untouched
        label = nib.load(outputs["label"][k]).get_fdata() > 0
        assert int(label.sum()) == record["replaced_voxels"]
        synthesised = nib.load(outputs["synthesised"][k]).get_fdata()
        np.testing.assert_allclose(synthesised[~label], source[~label], atol=1e-6)
    assert synthesised_tps == {"baseline", "followup"}  # either time point can be x

    # `mschange replay-supermix` rebuilds a sample from its record alone.
    assert (
        main(["replay-supermix", str(outputs["record"][1]), "--out", str(tmp_path / "replayed")])
        == 0
    )
    for kind, name in (("synthesised", "desc-synthesised_FLAIR"), ("label", "desc-change_mask")):
        replayed = nib.load(tmp_path / "replayed" / f"s1_{name}.nii.gz").get_fdata()
        assert np.array_equal(replayed, nib.load(outputs[kind][1]).get_fdata()), kind
    # ...and refuses when the VAE file changed since.
    save_vae(Vae3d(TINY_ARCHITECTURE), model, training={"retrained": True})
    assert (
        main(["replay-supermix", str(outputs["record"][1]), "--out", str(tmp_path / "again")]) == 2
    )


def test_config_checks_crop_size_and_ranges():
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["synthesis"]["vae"]["crop_size"] = [192, 192, 12]
    config["synthesis"]["supermix"]["n_segments"] = [5000, 200]
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert "multiple of 8" in str(error.value)
    assert "synthesis.supermix.n_segments" in str(error.value)
