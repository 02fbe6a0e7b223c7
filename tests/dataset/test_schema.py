import json
import logging

import numpy as np
import pytest
import torch
from datasets import Dataset

from acetune.dataset import schema
from acetune.errors import InputError, UsageError
from acetune.preprocessing import store


def test_blob_round_trip_each_dtype():
    x = torch.randn(3, 5)
    for name, dtype in schema.STORAGE_DTYPES.items():
        data, shape = schema.encode_blob(x, dtype)
        assert len(data) == x.numel() * torch.finfo(dtype).bits // 8, name
        back = schema.decode_blob(data, shape, dtype)
        assert back.dtype == dtype and back.shape == x.shape
        assert torch.equal(back, x.to(dtype))


def _legacy_ssl_blob(x: torch.Tensor) -> bytes:
    """What schema version 1 wrote: round(31 x / max|x|) per frame, 6 bits each, 4 values in 3 bytes."""
    q = torch.round(x / x.abs().amax(-1, keepdim=True) * 31).to(torch.int16).reshape(-1).numpy() + 32
    u = np.concatenate([q, np.full(-q.size % 4, 32)]).astype(np.uint8).reshape(-1, 4)
    return np.stack([(u[:, 0] << 2) | (u[:, 1] >> 4), ((u[:, 1] & 15) << 4) | (u[:, 2] >> 2),
                     ((u[:, 2] & 3) << 6) | u[:, 3]], axis=1).astype(np.uint8).tobytes()


def test_schema_1_datasets_load_with_their_ssl_directions(tmp_path, caplog):
    """A dataset written by the previous format keeps loading: its SSL targets decode to directions."""
    x = torch.randn(75, 1024)
    meta = schema.DatasetMeta(family="acestep-v1", checkpoint_hash="abc", ssl_names=["mert"])
    old = {k: v for k, v in vars(meta).items() if k != "ssl_encoding"} | {"schema_version": 1}
    (tmp_path / schema.META_FILE).write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING):
        loaded = schema.DatasetMeta.load(tmp_path)
    assert loaded.schema_version == 1 and loaded.ssl_encoding == schema.LEGACY_SSL_ENCODING
    assert "re-run `acetune preprocess`" in caplog.text
    row = {"ssl.mert": _legacy_ssl_blob(x), "ssl.mert.shape": [75, 1024]}
    back = schema.row_tensor(row, "ssl.mert", "float16", loaded.ssl_encoding)
    assert back.dtype == torch.float32 and back.abs().amax(-1).eq(1).all()  # directions scaled to peak 1
    assert torch.nn.functional.cosine_similarity(back, x, dim=-1).min() > 0.999
    # a new preprocess run cannot add rows to it: the encodings would mix
    with pytest.raises(UsageError, match="schema_version: 1 there, 2 now"):
        store.check_compatible(loaded, meta, tmp_path, fix="use a new --output_name")


def test_unknown_schema_version_is_refused_in_one_line(tmp_path):
    (tmp_path / schema.META_FILE).write_text(json.dumps({"schema_version": 3, "family": "x", "checkpoint_hash": ""}))
    with pytest.raises(InputError, match="schema version 3 is not 2") as err:
        schema.DatasetMeta.load(tmp_path)
    assert "\n" not in str(err.value) and "preprocess the songs again" in str(err.value)


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
    with pytest.raises(InputError, match="not a preprocessed"):
        schema.DatasetMeta.load(tmp_path / "nope")
    assert schema.config_hash({"a": 1, "_x": 2}) == schema.config_hash({"a": 1})
