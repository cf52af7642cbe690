"""Malformed GGUF files: each gives one clear GGUFError, with bounded memory and no read past
the end of the file (hypothesis fuzz on the header bytes of a real, small file)."""

from __future__ import annotations

import struct
import tracemalloc

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llm_quant.gguf import GGUFError, GGUFFile, check_header, load_gguf_model

T = gguf.GGMLQuantizationType
U32, STR, ARR = 4, 8, 9  # GGUF value types


def s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def tensor_info(name: str, dims: list[int], qtype: int, offset: int) -> bytes:
    return s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, qtype, offset)


def raw_gguf(
    kvs: list[bytes],
    infos: list[bytes],
    data: bytes = b"",
    *,
    version=3,
    n_tensors=None,
    n_kv=None,
    magic=b"GGUF",
) -> bytes:
    head = magic + struct.pack(
        "<IQQ",
        version,
        len(infos) if n_tensors is None else n_tensors,
        len(kvs) if n_kv is None else n_kv,
    )
    body = head + b"".join(kvs) + b"".join(infos)
    return body + b"\0" * (-len(body) % 32) + data


ARCH = kv("general.architecture", STR, s("llama"))
F32 = int(T.F32)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\3\4" + b"\0" * 40, r"not a GGUF file \(magic b'PK\\x03\\x04'"),
        (b"GGUF\3\0", "shorter than a GGUF header"),
        (raw_gguf([ARCH], [], version=1), "GGUF version 1 is not supported"),
        (raw_gguf([ARCH], [], version=3 << 24), "a big-endian file"),
        (raw_gguf([ARCH], [], n_kv=2**60), "claims 1152921504606846976 metadata keys"),
        (raw_gguf([ARCH], [], n_tensors=2**40), "claims 1099511627776 tensors"),
        (raw_gguf([ARCH], [])[:50], "truncated header: metadata key 0 at byte 32 needs 20 bytes"),
        (
            raw_gguf([kv("a", STR, struct.pack("<Q", 2**62))], []),
            "truncated header: the value of 'a'",
        ),
        (
            raw_gguf([kv("a", ARR, struct.pack("<IQ", U32, 2**61))], []),
            "the 2305843009213693952 elements of 'a'",
        ),
        (raw_gguf([kv("a", ARR, struct.pack("<IQ", STR, 2**61))], []), "elements of 'a'"),
        (raw_gguf([kv("a", 99, b"\0" * 8)], []), "'a': unknown value type 99"),
        (raw_gguf([kv("a", ARR, struct.pack("<IQ", 77, 1))], []), "unknown array element type 77"),
        (raw_gguf([ARCH, ARCH], []), "'general.architecture' appears twice"),
        (raw_gguf([kv("general.alignment", U32, struct.pack("<I", 24))], []), "not a power of two"),
        (
            raw_gguf([ARCH], [tensor_info("w", [32], 99, 0)], b"\0" * 128),
            "tensor 'w' has an unknown type 99",
        ),
        (raw_gguf([ARCH], [tensor_info("w", [1, 1, 1, 1, 1], F32, 0)], b"\0" * 32), "5 dimensions"),
        (
            raw_gguf([ARCH], [tensor_info("w", [64, 64], F32, 0)], b"\0" * 128),
            "tensor 'w' ends at byte",
        ),
        (
            raw_gguf([ARCH], [tensor_info("w", [8], F32, 2**50)], b"\0" * 32),
            "past the end of the file",
        ),
        (raw_gguf([ARCH], [tensor_info("w", [8], F32, 4)], b"\0" * 64), "not aligned to 32"),
        (
            raw_gguf([ARCH], [tensor_info("w", [20], int(T.Q8_0), 0)], b"\0" * 64),
            "not whole Q8_0 blocks of 32",
        ),
        (
            raw_gguf(
                [ARCH], [tensor_info("w", [8], F32, 0), tensor_info("w", [8], F32, 32)], b"\0" * 64
            ),
            "tensor 'w' appears twice",
        ),
        (
            b"GGUF"
            + struct.pack("<IQQQ", 3, 0, 1, 2)
            + b"k\xff"
            + struct.pack("<IB", 0, 1)
            + b"\0" * 32,
            "metadata key 0 at byte 32 is not UTF-8",
        ),
    ],
)
def test_malformed_files(content, message, tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=message) as info:
        GGUFFile(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_model_level_errors(tiny_gguf, tmp_path):
    _, path = tiny_gguf("llama", T.Q8_0)
    data = path.read_bytes()
    with pytest.raises(GGUFError, match="no such GGUF file"):
        GGUFFile(tmp_path / "missing.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(GGUFError, match="tensor 'output.weight' ends at byte .*past the end"):
        load_gguf_model(cut)
    bad = tmp_path / "shape.gguf"
    bad.write_bytes(
        data.replace(
            s("llama.feed_forward_length") + struct.pack("<II", U32, 96),
            s("llama.feed_forward_length") + struct.pack("<II", U32, 128),
        )
    )
    with pytest.raises(
        GGUFError,
        match=r"tensor 'blk.0.ffn_gate.weight' has shape \(96, 64\), but the config needs \(128, 64\)",
    ):
        load_gguf_model(bad)
    blocks = tmp_path / "blocks.gguf"
    blocks.write_bytes(
        data.replace(
            s("llama.block_count") + struct.pack("<II", U32, 2),
            s("llama.block_count") + struct.pack("<II", U32, 10**9),
        )
    )
    with pytest.raises(
        GGUFError, match="block_count is 1000000000, but the file has tensors for 2 blocks"
    ):
        load_gguf_model(blocks)
    qwen3 = tmp_path / "qwen3.gguf"
    qwen3.write_bytes(
        data.replace(
            s("general.architecture") + struct.pack("<I", STR) + s("llama"),
            s("general.architecture") + struct.pack("<I", STR) + s("lla3a"),
        )
    )
    with pytest.raises(
        GGUFError, match="architecture 'lla3a' is not supported .supported: llama, qwen2"
    ):
        load_gguf_model(qwen3)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A valid tiny F32 GGUF and the size of its header (everything before the tensor data)."""
    path = tmp_path_factory.mktemp("fuzz") / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("blk.0.attn_norm.weight", __import__("numpy").ones(32, dtype="float32"))
    writer.add_tensor("token_embd.weight", __import__("numpy").ones((3, 32), dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    return data, len(data) - (32 + 3 * 32) * 4


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_header_fuzz(small_file, tmp_path, data):
    content, header_size = small_file
    buf = bytearray(content)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, header_size - 1))
        width = data.draw(st.sampled_from([1, 4, 8]))
        value = data.draw(
            st.sampled_from([0, 1, 0xFF, 2**31, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)
        )
        buf[pos : pos + width] = (value % 256**width).to_bytes(width, "little")[: len(buf) - pos]
    if data.draw(st.booleans()):
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(buf))
    tracemalloc.start()
    try:
        try:
            check_header(path)
            GGUFFile(path).config()  # decodes every value; the fuzzed file is no full model
        except GGUFError as exc:
            assert "\n" not in str(exc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak} bytes"
