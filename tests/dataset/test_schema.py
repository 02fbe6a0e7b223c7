import torch
from datasets import Dataset

from acetune.dataset import schema


def test_blob_round_trip_each_dtype():
    x = torch.randn(3, 5)
    for name, dtype in schema.STORAGE_DTYPES.items():
        data, shape = schema.encode_blob(x, dtype)
        assert len(data) == x.numel() * torch.finfo(dtype).bits // 8, name
        back = schema.decode_blob(data, shape, dtype)
        assert back.dtype == dtype and back.shape == x.shape
        assert torch.equal(back, x.to(dtype))


def test_ssl_quantization_keeps_direction():
    x = torch.randn(40, 1024) * torch.rand(40, 1) * 50
    q = schema.quantize_ssl(x)
    assert q.dtype == torch.int8 and q.abs().max() == schema.SSL_LEVELS
    cos = torch.nn.functional.cosine_similarity(q.float(), x, dim=-1)
    assert cos.min() > 0.999


def test_int6_packing_round_trip_and_size():
    for n in (1, 3, 4, 7, 4096):
        q = torch.randint(-31, 32, (n,), dtype=torch.int8)
        data = schema.pack_int6(q)
        assert len(data) == 3 * ((n + 3) // 4)
        assert torch.equal(schema.unpack_int6(data, [n]), q)
    x = torch.randn(75, 1024)
    data, shape = schema.encode_column("ssl.mert", x, "float16")
    assert shape == [75, 1024] and len(data) == 75 * 1024 * 3 // 4
    row = {"ssl.mert": data, "ssl.mert.shape": shape}
    back = schema.row_tensor(row, "ssl.mert", "float16")
    assert torch.nn.functional.cosine_similarity(back.float(), x, dim=-1).min() > 0.999


def test_blobs_are_stored_as_16_bit_on_disk(tmp_path):
    lat = torch.randn(8, 16, 100)
    data, shape = schema.encode_blob(lat, torch.float16)
    ds = Dataset.from_dict({schema.LATENTS: [data], schema.shape_column(schema.LATENTS): [shape]})
    ds.save_to_disk(tmp_path / "d")
    on_disk = sum(p.stat().st_size for p in (tmp_path / "d").glob("*.arrow"))
    assert lat.numel() * 2 <= on_disk < lat.numel() * 2 + 4096
    row = Dataset.load_from_disk(tmp_path / "d")[0]
    assert torch.equal(schema.row_tensor(row, schema.LATENTS, "float16"), lat.half())


def test_meta_round_trip_and_errors(tmp_path):
    meta = schema.DatasetMeta(family="acestep-v1", checkpoint_hash="abc", ssl_names=["mert"])
    meta.save(tmp_path)
    assert schema.DatasetMeta.load(tmp_path) == meta
    import pytest

    from acetune.errors import InputError

    with pytest.raises(InputError, match="not a preprocessed"):
        schema.DatasetMeta.load(tmp_path / "nope")
    assert schema.config_hash({"a": 1, "_x": 2}) == schema.config_hash({"a": 1})
