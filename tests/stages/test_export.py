"""`acetune export`: golden bake, ComfyUI-rule loading vs peft, .alpha form, merge, resize, errors."""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tests.lora.test_import_15 import (
    ATTN,
    _official,
    assert_close,
    build_tiny,
    comfy_base,
    renamed,
    state,
    trained,
)
from tests.lora.test_import_15 import comfyui_apply as comfyui_apply_15

from acetune.cli import run_command
from acetune.layout import CONFIG_FILE, V1_TRANSFORMER_DIR, WEIGHTS_FILE, WEIGHTS_INDEX_FILE
from acetune.lora import keys as lk
from acetune.lora.file import NO_SCALE_ERROR, read_lora
from acetune.parity.registry import rel_l2

REPO = Path(__file__).resolve().parents[2]
ADAPTER = "lora_adapter"
TOL = 1e-5


# ---- ComfyUI's rule, written from ../shared/facts/comfyui-lora.md ----

def comfyui_apply(base: dict, lora: dict, strength: float = 1.0) -> dict:
    """W += strength * (alpha / rank if `.alpha` else 1) * B @ A for each mapped module (DoRA: `.dora_scale`).

    Key map as ComfyUI builds it for v1: for each official `<P>.weight`, the LoRA prefixes `P`,
    `diffusion_model.P` and `lora_unet_<P with . -> _>`; suffix pairs lora_up/lora_down,
    lora_B/lora_A, lora_B.default/lora_A.default. Asserts every LoRA key was loaded.
    """
    out = {k: v.clone() for k, v in base.items()}
    loaded = set()
    for key in base:
        if not key.endswith(".weight"):
            continue
        p = key[:-len(".weight")]
        for prefix in (p, "diffusion_model." + p, "lora_unet_" + p.replace(".", "_")):
            for up, down in ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"),
                             (".lora_B.default.weight", ".lora_A.default.weight")):
                if prefix + up not in lora:
                    continue
                b, a = lora[prefix + up].float(), lora[prefix + down].float()
                alpha, dora = lora.get(prefix + ".alpha"), lora.get(prefix + ".dora_scale")
                scale = float(alpha) / a.shape[0] if alpha is not None else 1.0
                w = out[key].float()
                if dora is None:
                    out[key] = (w + strength * scale * (b @ a)).to(base[key].dtype)
                else:  # DoRA: W_calc = W + s B A, times dora_scale / (||W||_row + eps); interpolated by strength
                    calc = (w + scale * (b @ a)) * (dora / (w.norm(dim=1, keepdim=True) + torch.finfo(w.dtype).eps))
                    out[key] = (w + strength * (calc - w)).to(base[key].dtype)
                loaded |= {prefix + up, prefix + down} | {prefix + t for t, v in ((".alpha", alpha),
                                                                                  (".dora_scale", dora)) if v is not None}
    assert set(lora) == loaded, f"lora key not loaded: {sorted(set(lora) - loaded)[:3]}"
    return out


# ---- a small module named like the transformer ----

class Attn(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(d, d) for _ in range(3))
        self.to_out = torch.nn.ModuleList([torch.nn.Linear(d, d), torch.nn.Dropout(0.0)])

    def forward(self, x):
        return self.to_out[0](torch.tanh(self.to_q(x)) * self.to_k(x) + self.to_v(x))


class TinyNet(torch.nn.Module):
    """`transformer_blocks.N.{attn,cross_attn}.{to_q,to_k,to_v,to_out.0}`, `lyric_encoder.encoders.N.self_attn.linear_*`."""

    def __init__(self, d=12):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList()
        for _ in range(2):
            blk = torch.nn.Module()
            blk.attn, blk.cross_attn = Attn(d), Attn(d)
            self.transformer_blocks.append(blk)
        self.lyric_encoder = torch.nn.Module()
        self.lyric_encoder.encoders = torch.nn.ModuleList()
        for _ in range(2):
            enc = torch.nn.Module()
            enc.self_attn = torch.nn.Module()
            enc.self_attn.linear_q, enc.self_attn.linear_k, enc.self_attn.linear_v = (torch.nn.Linear(d, d) for _ in range(3))
            self.lyric_encoder.encoders.append(enc)

    def forward(self, x):
        for enc in self.lyric_encoder.encoders:
            a = enc.self_attn
            x = x + torch.sigmoid(a.linear_q(x)) * a.linear_k(x) + a.linear_v(x)
        for blk in self.transformer_blocks:
            x = x + blk.attn(x) + blk.cross_attn(x)
        return x


CONFIGS = {
    "rslora": {"r": 4, "lora_alpha": 1, "use_rslora": True,
               "target_modules": ["linear_q", "linear_k", "linear_v", "to_q", "to_k", "to_v", "to_out.0"]},
    "plain": {"r": 6, "lora_alpha": 3, "use_rslora": False, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]},
}


def make_lora(tmp_path: Path, cfg: dict, seed: int = 0):
    """(base net, peft-wrapped net, LoRA checkpoint folder). Both LoRA factors are non-zero."""
    torch.manual_seed(seed)
    base = TinyNet().eval()
    peft_net = TinyNet().eval()
    peft_net.load_state_dict(base.state_dict())
    inject_adapter_in_model(LoraConfig(**cfg), peft_net, adapter_name=ADAPTER)
    with torch.no_grad():
        for name, p in peft_net.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    folder = tmp_path / "step-000010"
    folder.mkdir()
    save_file(lk.saved_lora_state_dict(peft_net, ADAPTER), str(folder / lk.LORA_WEIGHTS_FILE), metadata=lk.SAVED_METADATA)
    (folder / lk.ADAPTER_CONFIG_FILE).write_text(json.dumps(cfg))
    return base, peft_net, folder


def export(*argv) -> None:
    assert run_command("export", [str(a) for a in argv]) == 0


def forward_with(state: dict, x: torch.Tensor) -> torch.Tensor:
    net = TinyNet().eval()
    net.load_state_dict(state)
    with torch.no_grad():
        return net(x)


# ---- (1) golden: the fork's bake ----

def test_bake_reproduces_fork_golden(golden, tmp_path):
    g = golden / "v1_train_step_tiny"
    ref = load_file(str(g / "lora_baked_alpha.safetensors"))
    out = tmp_path / "baked.safetensors"
    export("--input_name", g / "lora_saved.safetensors", "--output_name", out, "--lora_config_path",
           g / "lora_config.json", "--bake_alpha")
    ours = load_file(str(out))
    assert sorted(ours) == sorted(ref)
    assert max((ours[k] - ref[k]).abs().max().item() for k in ref) <= 1e-7


def test_fork_shim_reads_checkpoint_config(golden, tmp_path):
    """`python add_alpha_in_lora.py` with the fork's flags; r/alpha/rsLoRA from adapter_config.json beside it."""
    g = golden / "v1_train_step_tiny"
    ref = load_file(str(g / "lora_baked_alpha.safetensors"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(g / "lora_saved.safetensors", ckpt / lk.LORA_WEIGHTS_FILE)
    shutil.copy(g / "lora_config.json", ckpt / lk.ADAPTER_CONFIG_FILE)
    shim_out = tmp_path / "shim.safetensors"
    proc = subprocess.run([sys.executable, str(REPO / "add_alpha_in_lora.py"), "--input_name",
                           str(ckpt / lk.LORA_WEIGHTS_FILE), "--output_name", str(shim_out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours = load_file(str(shim_out))
    assert max((ours[k] - ref[k]).abs().max().item() for k in ref) <= 1e-7


# ---- (2) baked LoRA loaded by ComfyUI's rule == peft, every key style ----

@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
@pytest.mark.parametrize("fmt", ["peft", "comfyui", "kohya"])
def test_baked_export_loads_like_peft(tmp_path, cfg_name, fmt):
    base, peft_net, folder = make_lora(tmp_path, CONFIGS[cfg_name])
    out = tmp_path / "out.safetensors"
    export("--input_name", folder, "--output_name", out, "--format", fmt, "--bake_alpha")
    lora = load_file(str(out))
    assert not any(k.endswith(".alpha") for k in lora)
    x = torch.randn(3, 5, 12)
    with torch.no_grad():
        want = peft_net(x)
    got = forward_with(comfyui_apply(base.state_dict(), lora), x)
    assert rel_l2(got, want) <= TOL
    assert rel_l2(forward_with(base.state_dict(), x), want) > 1e-2  # the LoRA does change the output


def test_unbaked_file_is_too_strong_in_comfyui(tmp_path):
    """Why baking exists: the raw rsLoRA file loads at scale 1 instead of alpha / sqrt(r) = 0.5."""
    base, peft_net, folder = make_lora(tmp_path, CONFIGS["rslora"])
    x = torch.randn(3, 5, 12)
    raw = comfyui_apply(base.state_dict(), load_file(str(folder / lk.LORA_WEIGHTS_FILE)))
    with torch.no_grad():
        assert rel_l2(forward_with(raw, x), peft_net(x)) > 1e-2


# ---- (3) .alpha form == baked form under ComfyUI's rule ----

@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_alpha_tensors_equal_baked(tmp_path, cfg_name):
    cfg = CONFIGS[cfg_name]
    base, _, folder = make_lora(tmp_path, cfg)
    export("--input_name", folder, "--output_name", tmp_path / "alpha.safetensors", "--format", "comfyui", "--write_alpha")
    export("--input_name", folder, "--output_name", tmp_path / "baked.safetensors", "--format", "comfyui")
    with_alpha = load_file(str(tmp_path / "alpha.safetensors"))
    alphas = [v for k, v in with_alpha.items() if k.endswith(".alpha")]
    expected = cfg["lora_alpha"] * (math.sqrt(cfg["r"]) if cfg["use_rslora"] else 1.0)  # s * r
    assert alphas and all(abs(float(a) - expected) < 1e-6 for a in alphas)
    w1 = comfyui_apply(base.state_dict(), with_alpha)
    w2 = comfyui_apply(base.state_dict(), load_file(str(tmp_path / "baked.safetensors")))
    assert max(rel_l2(w1[k], w2[k]) for k in w1) <= 1e-6
    # Reading the .alpha file back gives the same scales (alpha tensors define them).
    mods = read_lora(tmp_path / "alpha.safetensors", if_no_scale=NO_SCALE_ERROR).modules
    assert all(math.isclose(m.scale, expected / cfg["r"], rel_tol=1e-6) for m in mods.values())


# ---- (4) merge ----

def write_transformer(folder: Path, state: dict, shards: int = 1) -> None:
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"_class_name": "TinyNet"}))
    if shards == 1:
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        return
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (folder / WEIGHTS_INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def read_transformer(folder: Path) -> dict:
    state = {}
    for f in folder.glob("*.safetensors"):
        state.update(load_file(str(f)))
    return state


@pytest.mark.parametrize("shards", [1, 3])
def test_merge_matches_peft(tmp_path, shards):
    base, peft_net, folder = make_lora(tmp_path, CONFIGS["rslora"])
    ckpt = tmp_path / "ACE-Step-v1"
    write_transformer(ckpt / V1_TRANSFORMER_DIR, base.state_dict(), shards)
    x = torch.randn(3, 5, 12)
    for strength in (1.0, 0.5):
        out = tmp_path / f"merged_{strength}" / V1_TRANSFORMER_DIR
        export("--input_name", folder, "--merge", "--checkpoint_dir", ckpt, "--strength", strength, "--output_name", out)
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (ckpt / V1_TRANSFORMER_DIR).iterdir())
        for module in peft_net.modules():
            if hasattr(module, "scaling"):
                module.scaling[ADAPTER] = module.scaling[ADAPTER] * 0 + peft_net_scale(module) * strength
        with torch.no_grad():
            want = peft_net(x)
        assert rel_l2(forward_with(read_transformer(out), x), want) <= TOL
    assert not list(tmp_path.glob("**/.*.tmp-*"))  # no temp leftovers


def peft_net_scale(module) -> float:
    return module.lora_alpha[ADAPTER] / math.sqrt(module.r[ADAPTER])  # rsLoRA config


# ---- (5) resize ----

def kept_energies(stdout: str) -> dict:
    rows = re.findall(r"^(\S+)\s+(\d+) -> (\d+)\s+([0-9.]+)$", stdout, re.M)
    return {m: (int(r0), int(r1), float(e)) for m, r0, r1, e in rows}


def delta(mod) -> torch.Tensor:
    return mod.scale * mod.b.double() @ mod.a.double()


@pytest.mark.parametrize("flag,value", [("--resize", 2), ("--resize_energy", 0.9)])
def test_resize_error_matches_reported_energy(tmp_path, capsys, flag, value):
    _, _, folder = make_lora(tmp_path, CONFIGS["plain"])
    out = tmp_path / "small"
    capsys.readouterr()
    export("--input_name", folder, "--output_name", out, flag, value)
    report = kept_energies(capsys.readouterr().out)
    before = read_lora(folder / lk.LORA_WEIGHTS_FILE, if_no_scale=NO_SCALE_ERROR).modules
    after_file = read_lora(out / lk.LORA_WEIGHTS_FILE, if_no_scale=NO_SCALE_ERROR)
    after, cfg = after_file.modules, after_file.config  # through the written adapter_config.json
    assert json.loads((out / lk.ADAPTER_CONFIG_FILE).read_text()) == cfg
    assert set(report) == set(before) == set(after)
    for m, (r0, r1, kept) in report.items():
        assert (r0, r1) == (before[m].rank, after[m].rank)
        err = rel_l2(delta(after[m]), delta(before[m]))
        assert abs(err - math.sqrt(max(0.0, 1 - kept))) < 1e-5, (m, err, kept)
        s = torch.linalg.svdvals(delta(before[m]))
        energy = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
        if flag == "--resize":
            assert r1 == value
        else:  # the smallest rank keeping the requested energy
            assert kept >= value and (r1 == 1 or energy[r1 - 2] < value)
            assert abs(energy[r1 - 1].item() - kept) < 1e-6


def test_resize_then_bake_for_comfyui(tmp_path, capsys):
    base, _, folder = make_lora(tmp_path, CONFIGS["rslora"])
    out = tmp_path / "small.safetensors"
    export("--input_name", folder, "--output_name", out, "--resize", 2, "--format", "comfyui")
    report = kept_energies(capsys.readouterr().out)
    before = read_lora(folder / lk.LORA_WEIGHTS_FILE, if_no_scale=NO_SCALE_ERROR).modules
    merged = comfyui_apply(base.state_dict(), load_file(str(out)))
    for m, (_, r1, kept) in report.items():
        assert r1 == 2
        got = merged[m + ".weight"].double() - base.state_dict()[m + ".weight"].double()
        assert abs(rel_l2(got, delta(before[m])) - math.sqrt(1 - kept)) < 1e-5


# ---- the golden tiny transformer (when acetune.models.v1 is importable) ----

def test_golden_transformer_comfyui_and_merge(golden, tmp_path):
    try:
        from acetune.models.v1.transformer import ACEStepTransformer2DModel
        from acetune.parity.transformer import load_inputs, run_forward, tiny_model
    except ImportError as e:
        pytest.skip(f"v1 transformer not available yet: {e}")
    g, t = golden / "v1_train_step_tiny", golden / "v1_transformer_tiny"
    cfg = json.loads((g / "lora_config.json").read_text())
    inputs = {k: v for k, v in load_inputs(t / "inputs.safetensors").items() if k != "ssl_hidden_states"}
    base_state = {k: v.clone() for k, v in tiny_model(t).state_dict().items()}

    peft_model = tiny_model(t)
    inject_adapter_in_model(LoraConfig(**cfg), peft_model, adapter_name=ADAPTER)
    from peft.utils import set_peft_model_state_dict
    set_peft_model_state_dict(peft_model, load_file(str(g / "lora_weights.safetensors")), adapter_name=ADAPTER)
    assert sorted(lk.saved_lora_state_dict(peft_model, ADAPTER)) == sorted(load_file(str(g / "lora_saved.safetensors")))
    with torch.no_grad():
        want = run_forward(peft_model.eval(), inputs, capture=False)["sample"]

    out = tmp_path / "comfy.safetensors"
    export("--input_name", g / "lora_weights.safetensors", "--lora_config_path", g / "lora_config.json",
           "--format", "comfyui", "--output_name", out)
    model = tiny_model(t)
    model.load_state_dict(comfyui_apply(base_state, load_file(str(out))))
    with torch.no_grad():
        got = run_forward(model, inputs, capture=False)["sample"]
    assert rel_l2(got, want) <= TOL
    with torch.no_grad():
        assert rel_l2(run_forward(tiny_model(t), inputs, capture=False)["sample"], want) > 1e-4

    ckpt = tmp_path / "ckpt" / V1_TRANSFORMER_DIR
    ckpt.mkdir(parents=True)
    shutil.copy(t / "config.json", ckpt / CONFIG_FILE)
    shutil.copy(t / "weights.safetensors", ckpt / WEIGHTS_FILE)
    merged = tmp_path / "merged"
    export("--input_name", g / "lora_weights.safetensors", "--lora_config_path", g / "lora_config.json", "--merge",
           "--checkpoint_dir", ckpt.parent, "--output_name", merged)
    with torch.no_grad():
        got = run_forward(ACEStepTransformer2DModel.from_pretrained(merged), inputs, capture=False)["sample"]
    assert rel_l2(got, want) <= TOL


# ---- (6) DoRA ----

def test_dora_exports_match_peft(tmp_path, capsys):
    """ComfyUI's DoRA rule on our export (dora_scale from the base) == peft's DoRA model; generate's fuse too."""
    from acetune.lora.fuse import fuse_loras

    base, peft_net, folder = make_lora(tmp_path, {**CONFIGS["plain"], "use_dora": True})
    ckpt = tmp_path / "ckpt"
    write_transformer(ckpt / V1_TRANSFORMER_DIR, base.state_dict())
    x = torch.randn(3, 5, 12)
    with torch.no_grad():
        want = peft_net(x)
    assert rel_l2(forward_with(base.state_dict(), x), want) > 1e-2
    comfy, plain = tmp_path / "comfy.safetensors", tmp_path / "peft.safetensors"
    export("--input_name", folder, "--format", "comfyui", "--checkpoint_dir", ckpt, "--output_name", comfy)
    lora = load_file(str(comfy))
    assert sum(k.endswith(".dora_scale") for k in lora) == 16 and not any("magnitude" in k for k in lora)
    assert rel_l2(forward_with(comfyui_apply(base.state_dict(), lora), x), want) <= TOL
    export("--input_name", folder, "--output_name", plain)  # peft layout: the magnitude as trained
    assert sum(k.endswith(".lora_magnitude_vector") for k in load_file(str(plain))) == 16
    for path in (comfy, plain):  # `acetune generate` fuses either file to the same model
        net = TinyNet().eval()
        net.load_state_dict(base.state_dict())
        fuse_loras(net, [(read_lora(path, if_no_scale=NO_SCALE_ERROR if path == plain else "baked"), 1.0)])
        with torch.no_grad():
            assert rel_l2(net(x), want) <= TOL
    for argv, message in ((["--format", "comfyui"], "--checkpoint_dir"), (["--bake_alpha"], "--checkpoint_dir"),
                          (["--merge", "--checkpoint_dir", ckpt], "--merge"), (["--resize", 2], "--resize")):
        assert message in _error_line(capsys, ["--input_name", folder, *argv])


# ---- (7) bad input ----

def _error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert run_command("export", [str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "\n" not in err, err
    return err


def test_bad_inputs(tmp_path, capsys):
    _, _, folder = make_lora(tmp_path, CONFIGS["plain"])
    weights = folder / lk.LORA_WEIGHTS_FILE
    missing = tmp_path / "nope.safetensors"
    assert str(missing) in _error_line(capsys, ["--input_name", missing])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    assert str(garbage) in _error_line(capsys, ["--input_name", garbage, "--bake_alpha"])
    no_lora = tmp_path / "base.safetensors"
    save_file(TinyNet().state_dict(), str(no_lora))
    assert str(no_lora) in _error_line(capsys, ["--input_name", no_lora, "--assume_baked"])
    lokr = tmp_path / "lokr.safetensors"
    save_file({"lycoris_transformer_blocks_0_attn_to_q.lokr_w1": torch.ones(2, 2)}, str(lokr))
    assert "not LoRA keys" in _error_line(capsys, ["--input_name", lokr, "--assume_baked"])
    lone = tmp_path / "lone" / "x.safetensors"
    lone.parent.mkdir()
    shutil.copy(weights, lone)
    assert "no adapter config" in _error_line(capsys, ["--input_name", lone, "--bake_alpha"])
    wrong_cfg = tmp_path / "wrong.json"
    wrong_cfg.write_text(json.dumps({"r": 64, "lora_alpha": 1}))
    assert "r=64" in _error_line(capsys, ["--input_name", weights, "--lora_config_path", wrong_cfg, "--bake_alpha"])
    assert "choose one" in _error_line(capsys, ["--input_name", weights, "--resize", 2, "--resize_energy", 0.9])
    assert "--checkpoint_dir" in _error_line(capsys, ["--input_name", weights, "--merge"])
    assert "--merge only" in _error_line(capsys, ["--input_name", weights, "--strength", 0.5])
    assert "input file" in _error_line(capsys, ["--input_name", weights, "--output_name", weights])
    assert "no transformer" in _error_line(capsys, ["--input_name", weights, "--merge", "--checkpoint_dir", tmp_path])

    with safe_open(str(weights), "pt") as f:  # the input was never touched
        assert f.metadata() == lk.SAVED_METADATA


# ---- (8) the three ACE-Step 1.5 export bugs of issue 13 ----


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tiny 1.5 decoder with the original names, its transformer folder): `test_import_15.build_tiny`."""
    return build_tiny(tmp_path_factory)


def _v15_step(tree, tmp_path, keys_prefix: str = ""):
    """An `acetune train` 1.5 step folder: saved layout, adapter_config.json and train_config.json naming 1.5."""
    model, want = trained(tree, LoraConfig(r=4, lora_alpha=8, target_modules=ATTN))
    step = tmp_path / "out" / "step-000004"
    step.mkdir(parents=True)
    sd = renamed(state(model), keys_prefix, diffusers=not keys_prefix)
    save_file(sd, str(step / lk.LORA_WEIGHTS_FILE), metadata=lk.SAVED_METADATA)
    (step / lk.ADAPTER_CONFIG_FILE).write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ATTN}))
    (step / "train_config.json").write_text(json.dumps({"family": "acestep15"}))
    return step, want


@pytest.mark.parametrize("how", ["acetune", "shim"])
def test_bug1_bake_alpha_on_15_step_writes_baked_comfyui_file(tiny, tmp_path, how):
    tree, _ = tiny
    step, want = _v15_step(tree, tmp_path)
    out = tmp_path / "X.safetensors"
    if how == "acetune":
        export("--input_name", step, "--bake_alpha", "--output_name", out)
    else:
        proc = subprocess.run([sys.executable, str(REPO / "add_alpha_in_lora.py"), "--input_name", str(step),
                               "--output_name", str(out)], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert out.is_file()  # a file, not a folder named X.safetensors
    lora = load_file(str(out))
    assert lora and all(k.startswith("base_model.model.layers.") for k in lora)
    assert not any(k.endswith(".alpha") for k in lora)  # baked: ComfyUI applies scale 1
    assert_close(comfyui_apply_15(comfy_base(tree), lora), want)


def test_bug1_every_flag_applies_or_is_refused(tiny, tmp_path, capsys):
    tree, _ = tiny
    step, want = _v15_step(tree, tmp_path)
    assert "--format comfyui" in _error_line(capsys, ["--input_name", step, "--bake_alpha", "--format", "peft"])
    capsys.readouterr()
    resized = tmp_path / "r2.safetensors"
    export("--input_name", step, "--resize", 2, "--format", "comfyui", "--output_name", resized)
    report = kept_energies(capsys.readouterr().out)
    assert len(report) == 16 and all(r == (4, 2, report[m][2]) for m, r in report.items())
    base = {k: v.double() for k, v in comfy_base(tree).items()}
    got = comfyui_apply_15(comfy_base(tree), load_file(str(resized)))
    for m, (_, _, kept) in report.items():
        key = f"diffusion_model.decoder.{m}.weight"
        assert abs(rel_l2(got[key] - base[key], want[key].double() - base[key]) - math.sqrt(1 - kept)) < 1e-5
    # the diffusers layout to a .safetensors name is that file
    out = tmp_path / "d.safetensors"
    export("--input_name", step, "--output_name", out)
    assert out.is_file() and all(k.startswith("transformer.layers.") for k in load_file(str(out)))


def test_bug2_keys_already_prefixed_are_not_prefixed_twice(tiny, tmp_path):
    tree, _ = tiny
    step, want = _v15_step(tree, tmp_path, keys_prefix="base_model.model.")
    out = tmp_path / "comfy.safetensors"
    export("--input_name", step, "--format", "comfyui", "--output_name", out)
    lora = load_file(str(out))
    assert not any(k.startswith("base_model.model.base_model.") for k in lora)
    assert_close(comfyui_apply_15(comfy_base(tree), lora), want)  # every key maps, at the trained strength


def test_bug3_15_lora_without_train_config_is_accepted(tiny, tmp_path):
    tree, _ = tiny
    folder, want = _official(tree, tmp_path)  # official trainer: adapter_model.safetensors + adapter_config.json
    assert not (folder / "train_config.json").exists()
    out = tmp_path / "comfy.safetensors"
    export("--input_name", folder / "adapter_model.safetensors", "--format", "comfyui", "--output_name", out)
    assert_close(comfyui_apply_15(comfy_base(tree), load_file(str(out))), want)
