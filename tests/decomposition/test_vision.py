"""``daskdict.decompose`` of vision transformers: ViT (and ViT-MSN), DeiT, DINOv2 (MLP, SwiGLU,
with registers) and CLIP (full model, vision tower with and without projection), and per-token
contributions.

Tiny random models (:mod:`helpers_vision`: 32 px images, patch 8, width 32, 3 blocks, 4 heads,
every LayerNorm parameter, bias and layer scale perturbed) are saved with ``save_pretrained`` and
loaded by name of folder, as a user's model is.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_vision import KINDS, build_vision, images, save_vision

import daskdict
from daskdict.decomposition import component_layers, decompose
from daskdict.decomposition.bert import component_names
from daskdict.decomposition.tokens import token_contributions
from daskdict.decomposition.vision import load_vision, residual_components, run_tower
from daskdict.errors import InvalidInputError

torch = pytest.importorskip("torch", reason="needs the embed extra: pip install 'daskdict[embed]'")
transformers = pytest.importorskip(
    "transformers", reason="needs the embed extra: pip install 'daskdict[embed]'")

# the product's bar: max over rows of ||sum of components - final|| / ||final||
BAR = 1e-5
IMAGES = images(5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(kind)``: the folder of a tiny model of ``kind`` (3 blocks), built once."""
    root = tmp_path_factory.mktemp("vision")
    cache: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in cache:
            cache[kind] = str(save_vision(kind, root / kind))
        return cache[kind]

    return get


def _relative_error(total: np.ndarray, final: np.ndarray) -> float:
    total, final = np.asarray(total, np.float64), np.asarray(final, np.float64)
    return float(np.max(np.linalg.norm(total - final, axis=1) / np.linalg.norm(final, axis=1)))


def _total(store) -> np.ndarray:
    return sum(store.layer_array(n)[...].astype(np.float64) for n in component_layers(store))


def _own_output(kind: str, model_path: str, pixels: np.ndarray) -> np.ndarray:
    """What the model itself returns as its image embedding, through transformers' own API."""
    inputs = torch.from_numpy(pixels)
    with torch.inference_mode():
        if kind == "clip":
            model = transformers.CLIPModel.from_pretrained(model_path)
            out = model.get_image_features(pixel_values=inputs)
            out = getattr(out, "pooler_output", out)
        elif kind == "clip_projection":
            model = transformers.CLIPVisionModelWithProjection.from_pretrained(model_path)
            out = model(pixel_values=inputs).image_embeds
        elif kind == "clip_vision":
            out = transformers.CLIPVisionModel.from_pretrained(model_path)(
                pixel_values=inputs).pooler_output
        else:
            out = transformers.AutoModel.from_pretrained(model_path)(
                pixel_values=inputs).last_hidden_state[:, 0]
    return out.numpy()


def _pixels(model_path: str) -> np.ndarray:
    processor = transformers.AutoImageProcessor.from_pretrained(model_path)
    return np.stack([processor(images=image, return_tensors="np")["pixel_values"][0]
                     for image in IMAGES]).astype(np.float32)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kind", KINDS)
def test_components_sum_to_what_embed_stores(saved, tmp_path, kind):
    path = saved(kind)
    store = decompose(IMAGES, tmp_path / "d.zarr", path, verbose=False, batch_size=2)
    layers = component_layers(store)
    assert layers == [f"component.{n}" for n in component_names(3, 4, 3)]
    final = store.layer_array("final")[...]
    width = 16 if kind in ("clip", "clip_projection") else 32
    assert final.shape == (len(IMAGES), width)
    assert _relative_error(_total(store), final) <= BAR
    embedded = daskdict.embed(IMAGES, tmp_path / "e.zarr", path, layers=["final"],
                              device="cpu", precision="float32", verbose=False)
    assert _relative_error(final, embedded.layer_array("final")[...]) <= BAR
    assert _relative_error(final, _own_output(kind, path, _pixels(path))) <= BAR
    heads = [store.layer_array(f"component.{b:02d}.h{h:02d}")[...]
             for b in (1, 2, 3) for h in range(4)]
    assert all(np.linalg.norm(head, axis=1).min() > 1e-4 for head in heads)
    assert all(np.abs(a - b).max() > 1e-4 for i, a in enumerate(heads) for b in heads[i + 1:])
    for name in ("component.init", "component.03.mlp"):
        assert np.abs(store.layer_array(name)[...]).max() > 1e-3
    header = store.attrs
    assert header["decomposition"]["n_layers"] == 3 and header["embed"]["complete"]
    assert header["decomposition"]["dtype"] == "float32"


@pytest.mark.parametrize("kind", ["vit", "dinov2", "clip"])
def test_fewer_blocks_than_the_model_has(saved, tmp_path, kind):
    store = decompose(IMAGES[:3], tmp_path / "d.zarr", saved(kind), n_layers=1, verbose=False)
    assert component_layers(store) == [f"component.{n}" for n in component_names(3, 4, 1)]
    assert component_layers(store)[1] == "component.03.h00"
    assert _relative_error(_total(store), store.layer_array("final")[...]) <= BAR
    assert store.attrs["decomposition"]["n_layers"] == 1


def test_the_default_is_the_last_ten_blocks(tmp_path):
    folder = save_vision("vit", tmp_path / "vit12", n_layers=12)
    store = decompose(IMAGES[:2], tmp_path / "d.zarr", folder, verbose=False)
    layers = component_layers(store)
    assert len(layers) == 1 + 10 * 5 and layers[1] == "component.03.h00"
    assert _relative_error(_total(store), store.layer_array("final")[...]) <= BAR


@pytest.mark.parametrize("kind", ["vit", "clip_vision"])
def test_head_outputs_are_the_models_own(saved, kind):
    """Each head's output (before the residual sum) is what the model's own output projection
    receives from that head, value bias removed."""
    path = saved(kind)
    _, _, tower = load_vision(path, transformers.AutoConfig.from_pretrained(path).model_type,
                              torch.device("cpu"), torch)
    # the model runs eager attention: the heads' contexts below are its own
    assert tower.module.config._attn_implementation == "eager"
    received = []
    hooks = [block.out.register_forward_pre_hook(lambda _, args: received.append(args[0]))
             for block in tower.blocks]
    pixels = torch.from_numpy(_pixels(path))
    with torch.inference_mode():
        out, keys, values = run_tower(tower, pixels, 3)
        for hook in hooks:
            hook.remove()
        init, heads, mlps = residual_components(tower, out.hidden_states, keys, values)
        hidden = out.hidden_states
    total = init + sum(h.sum(0) for h in heads) + sum(mlps)
    assert _relative_error(total.numpy(), hidden[-1][:, 0].numpy()) <= BAR
    for block, context, head in zip(tower.blocks, received, heads, strict=True):
        attention = block.attention
        bias = attention.v_proj.bias.detach()
        values = (context[:, 0] - bias).double().view(len(pixels), 4, 8)
        w_out = block.out.weight.detach().double().view(32, 4, 8)
        expected = torch.einsum("bhk,dhk->hbd", values, w_out)
        np.testing.assert_allclose(head.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- options


def test_float16_components(saved, tmp_path):
    store = decompose(IMAGES, tmp_path / "d.zarr", saved("vit"), dtype="float16",
                      verbose=False)
    assert store.layer_array("final").dtype == np.float32
    assert all(store.layer_array(n).dtype == np.float16 for n in component_layers(store))
    error = _relative_error(_total(store), store.layer_array("final")[...])
    # float16 keeps 11 significant bits: about 5e-4 per component, 16 components
    assert 1e-6 < error <= 2e-3
    assert store.attrs["decomposition"]["dtype"] == "float16"


def test_float16_refuses_components_it_cannot_hold(tmp_path):
    model, processor = build_vision("vit")
    with torch.no_grad():
        model.layernorm.weight.mul_(1e6)
    model.save_pretrained(tmp_path / "large")
    processor.save_pretrained(tmp_path / "large")
    with pytest.raises(InvalidInputError, match="does not fit in float16"):
        decompose(IMAGES, tmp_path / "d.zarr", tmp_path / "large", dtype="float16",
                  verbose=False)
    store = decompose(IMAGES, tmp_path / "f.zarr", tmp_path / "large", verbose=False)
    assert np.abs(store.layer_array("component.init")[...]).max() > 7e4


@pytest.mark.parametrize("bad", [{"dtype": "float64"}, {"n_layers": 0}, {"n_layers": 4},
                                 {"target": "pooler"}, {"text_column": "text"}])
def test_bad_options_are_refused_before_writing(saved, tmp_path, bad):
    message = {"dtype": "dtype", "n_layers": "n_layers", "target": "pooler",
               "text_column": "text_column"}[next(iter(bad))]
    with pytest.raises(InvalidInputError, match=message):
        decompose(IMAGES, tmp_path / "d.zarr", saved("vit"), verbose=False, **bad)
    assert not (tmp_path / "d.zarr").exists()


@pytest.mark.parametrize("kind", ["siglip", "beit"])
def test_unknown_vision_families_are_refused(tmp_path, kind):
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, image_size=32, patch_size=8)
    if kind == "siglip":
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**tiny))
        processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    else:
        model = transformers.BeitModel(transformers.BeitConfig(**tiny))
        processor = transformers.BeitImageProcessor(size={"height": 32, "width": 32},
                                                    do_center_crop=False)
    model.save_pretrained(tmp_path / kind)
    processor.save_pretrained(tmp_path / kind)
    name = model.config.model_type
    with pytest.raises(InvalidInputError, match=f"'{name}'"):
        decompose(IMAGES, tmp_path / "d.zarr", tmp_path / kind, verbose=False)
    with pytest.raises(InvalidInputError, match=f"'{name}'"):
        token_contributions(IMAGES[:1], tmp_path / kind)
    assert not (tmp_path / "d.zarr").exists()


def test_an_unreadable_image_is_flagged(saved, tmp_path):
    with pytest.warns(UserWarning, match="1 of 3 images"):
        store = decompose([IMAGES[0], b"not an image", IMAGES[1]], tmp_path / "d.zarr",
                          saved("deit"), verbose=False)
    for name in ["final", *component_layers(store)]:
        rows = store.layer_array(name)[...]
        assert not rows[1].any() and rows[[0, 2]].any()


# --------------------------------------------------------------------------- per token


@pytest.mark.parametrize("kind", ["vit", "deit", "dinov2_registers", "clip"])
def test_token_contributions_sum_to_the_stored_components(saved, tmp_path, kind):
    path = saved(kind)
    store = decompose(IMAGES[:3], tmp_path / "d.zarr", path, n_layers=2, verbose=False)
    names = ["02.h01", "03.h03", "03.mlp", "component.init"]
    result = token_contributions(IMAGES[:3], path, names, n_layers=2)
    # CLS, DeiT's distillation token or DINOv2's two registers, 16 patches
    n_tokens = {"deit": 18, "dinov2_registers": 19}.get(kind, 17)
    width = 16 if kind == "clip" else 32
    assert result.shape == (3, n_tokens, 4, width) and result.dtype == np.float32
    final = store.layer_array("final")[...].astype(np.float64)
    for column, name in enumerate(names):
        stored = store.layer_array("component." + name.removeprefix("component."))[...]
        summed = result[:, :, column].astype(np.float64).sum(1)
        scale = np.linalg.norm(final, axis=1)
        assert np.max(np.linalg.norm(summed - stored, axis=1) / scale) <= BAR
    # heads read from many tokens; the MLP and init sit at the CLS token
    assert (np.abs(result[:, 1:, 0]).max(axis=-1) > 1e-6).sum() > 10
    assert not result[:, 1:, 2:].any()


def test_token_contributions_refuse_an_unknown_component(saved):
    with pytest.raises(InvalidInputError, match="Unknown components"):
        token_contributions(IMAGES[:1], saved("vit"), ["01.h00"], n_layers=2)
    with pytest.raises(InvalidInputError, match="n_layers"):
        token_contributions(IMAGES[:1], saved("vit"), n_layers=5)


def test_build_vision_perturbs_every_affine():
    model, _ = build_vision("dinov2")
    scale = model.encoder.layer[0].layer_scale1.lambda1
    assert float(scale.detach().std()) > 0
    assert float(model.layernorm.bias.detach().abs().max()) > 0
