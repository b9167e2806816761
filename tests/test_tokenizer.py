"""Tokenizers: Qwen ids equal an independent implementation; byte layout; config checks."""

import dataclasses
import os
import shutil
import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

from bird_jax import config as C
from bird_jax import tokenizer as T


@pytest.fixture(scope="module")
def qwen():
  return T.qwen_tokenizer()


@pytest.fixture(scope="module")
def byte():
  return T.byte_tokenizer()


@pytest.fixture(scope="module")
def hf_reference():
  """transformers' TikTokenConverter fast tokenizer from the same qwen.tiktoken."""
  from tokenizers import normalizers
  from transformers.convert_slow_tokenizer import TikTokenConverter
  tok = TikTokenConverter(vocab_file=T.packaged_qwen_vocab(), pattern=T.QWEN_PATTERN,
                          extra_special_tokens=list(T.SPECIAL_TOKENS)).converted()
  tok.normalizer = normalizers.NFC()
  return tok


CORPUS = [
    "Hello world! The liver is located in the upper right abdomen.",
    "Can you tell me where the enhancing tumor is located in the image?",
    "I'm sure it's THE patient's scan; they'LL see, we'VE done, you'D know, 'RE 'S 'T 'M",
    "你好，世界。肝脏位于腹部右上方，肾脏在两侧。",
    "混合 mixed 文本 with 数字 12345 and 标点！？",
    "digits 0 7 42 1000 3.14159 -273.15 1e10 0x1F 2024-11-28",
    "spaces:  two   three    four\ttab\t\ttabs\n\nnewlines\r\nCRLF \n \n trailing   ",
    "   leading spaces and trailing newline\n",
    "\n\n\n",
    "café naïve coöperate",  # precomposed
    "cafe\u0301 nai\u0308ve",  # decomposed: NFC must compose it
    "emoji 🫀🧠🦴 and symbols ©®™ ≤≥ ± µm ° ²",
    "The <ref>enhancing tumor</ref> is located at the coordinates <box>(512,604),(679,758)</box>.",
    "What is the object at the coordinates <box>(454,554),(700,800)</box>?",
    "<ref>kidney</ref><box>(1,2),(3,4)</box><box>(999,0),(0,999)</box>",
    "Picture 1: <img>ct_00--AbdomenCT1K--Case_00011--x_0040.png</img>\nWhere is the liver?",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "<quad>(1,2),(3,4),(5,6),(7,8)</quad><|endoftext|><|extra_0|><|extra_204|><imgpad>",
    "".join(T.SPECIAL_TOKENS),
    "x<box>y</box>z<|im_end|>.<|im_end|>\n",
    "<box (1,2)> <img <|im_end| <|extra_205|> <|extra_-1|>",  # near misses stay text
    "a" * 300 + " " + "9" * 50,
]


def test_special_token_layout(qwen, byte):
  assert len(T.SPECIAL_TOKENS) == 217
  for tok, first in ((qwen, 151643), (byte, 256)):
    assert [tok.special_id(s) for s in T.SPECIAL_TOKENS] == list(range(first, first + 217))
    assert tok.n_vocab == first + 217
  assert (qwen.endoftext_id, qwen.im_start_id, qwen.im_end_id) == (151643, 151644, 151645)
  assert qwen.special_id("<|extra_0|>") == 151646 and qwen.special_id("<|extra_204|>") == 151850
  assert [qwen.special_id(s) for s in ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>")] \
      == list(range(151851, 151857))
  assert (qwen.img_id, qwen.img_end_id, qwen.imgpad_id) == (151857, 151858, 151859)
  assert qwen.img_id == C.QWEN_IMAGE_START_ID and qwen.pad_id == 151643
  assert (byte.endoftext_id, byte.im_start_id, byte.im_end_id) == (256, 257, 258)
  assert byte.special_id("<|extra_0|>") == 259 and byte.special_id("<|extra_204|>") == 463
  assert byte.special_id("<ref>") == 464
  assert (byte.img_id, byte.img_end_id, byte.imgpad_id) == (C.BYTE_IMAGE_START_ID, 471, 472)
  assert byte.n_vocab == 473 <= C.BYTE_VOCAB_SIZE
  with pytest.raises(KeyError, match="not a special token"):
    qwen.special_id("<mask>")


def test_known_qwen_ids(qwen):
  # role words and "\n" are single tokens; digits are single tokens
  assert qwen.encode("user") == [872] and qwen.encode("assistant") == [77091]
  assert qwen.encode("system") == [8948] and qwen.encode("\n") == [198]
  assert qwen.encode("(512,604)") == [7, 20, 16, 17, 11, 21, 15, 19, 8]


@pytest.mark.parametrize("text", CORPUS)
def test_qwen_ids_match_transformers(qwen, hf_reference, text):
  ids = qwen.encode(text)
  assert ids == hf_reference.encode(text, add_special_tokens=False).ids
  assert qwen.decode(ids) == unicodedata.normalize("NFC", text)
  assert qwen.decode(ids, skip_special_tokens=True) == hf_reference.decode(ids, skip_special_tokens=True)


def test_batch_matches_single(qwen, byte):
  for tok in (qwen, byte):
    assert tok.encode_batch(CORPUS) == [tok.encode(t) for t in CORPUS]


def test_allowed_special(qwen, byte):
  text = "a<box>(1,2),(3,4)</box><|im_end|>"
  for tok in (qwen, byte):
    special = tok.encode(text)
    assert special.count(tok.special_id("<box>")) == 1 and special[-1] == tok.im_end_id
    plain = tok.encode(text, allowed_special=set())
    assert all(i < tok.first_special_id for i in plain)
    assert tok.decode(plain) == tok.decode(special) == text
    some = tok.encode(text, allowed_special={"<|im_end|>"})
    assert tok.special_id("<box>") not in some and some[-1] == tok.im_end_id
    with pytest.raises(ValueError):
      tok.encode(text, allowed_special=set(), disallowed_special="all")


def test_decode_image_spans_and_bad_ids(qwen, byte):
  for tok in (qwen, byte):
    span = [tok.img_id, *b"ct_1.png", *[tok.imgpad_id] * 8, tok.img_end_id]
    ids = tok.encode("Picture 1: ") + span + tok.encode("\nhi")
    assert tok.decode(ids) == "Picture 1: <img>ct_1.png</img>\nhi"
    assert tok.decode(ids, skip_special_tokens=True) == "Picture 1: ct_1.png\nhi"
    pads = [tok.img_id] + [tok.imgpad_id] * 4 + [tok.img_end_id]
    assert tok.decode(pads) == "<img></img>"
    assert tok.decode([tok.img_id, tok.imgpad_id]) == "<img><imgpad>"  # unclosed: kept
    bad = tok.encode("ok") + [tok.n_vocab, -1] + tok.encode("!")
    assert tok.decode(bad) == "ok\ufffd\ufffd!"
    assert tok.decode(bad, skip_special_tokens=True) == "ok\ufffd!"


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_byte_tokenizer_round_trip(text):
  tok = T.byte_tokenizer()
  ids = tok.encode(text, allowed_special=set())
  nfc = unicodedata.normalize("NFC", text)
  assert ids == list(nfc.encode("utf-8"))
  assert tok.decode(ids) == nfc


def test_byte_tokenizer_specials(byte):
  ids = byte.encode("<|im_start|>user\nhé<|im_end|>")
  assert ids == [257, *b"user\n", *"hé".encode(), 258]
  assert byte.decode(ids) == "<|im_start|>user\nhé<|im_end|>"
  assert byte.decode(ids, skip_special_tokens=True) == "user\nhé"


def test_load_tokenizer(tmp_path):
  tiny = C.get_preset("tiny")
  assert T.load_tokenizer(tiny).name == "byte"
  assert T.load_tokenizer(tiny, hf_dir=str(tmp_path)).name == "byte"  # ignored for byte
  full = C.get_preset("qwen_vl_7b")
  assert T.load_tokenizer(full).n_vocab == 151860
  with pytest.raises(FileNotFoundError, match="no qwen.tiktoken"):
    T.load_tokenizer(full, hf_dir=str(tmp_path))
  shutil.copy(T.packaged_qwen_vocab(), tmp_path / "qwen.tiktoken")
  assert T.load_tokenizer(full, hf_dir=tmp_path).img_id == 151857
  small_vocab = tiny.replace(llm=dataclasses.replace(tiny.llm, vocab_size=400))
  with pytest.raises(ValueError, match="vocab_size is 400"):
    T.load_tokenizer(small_vocab)
  with pytest.raises(ValueError, match="image_start_id 151857 is not the byte"):
    T.load_tokenizer(tiny.replace(image_start_id=151857))
  with pytest.raises(ValueError, match="image_start_id 470 is not the qwen"):
    T.load_tokenizer(full.replace(image_start_id=470))
  with pytest.raises(ValueError, match="unknown tokenizer"):
    T.load_tokenizer(tiny.replace(tokenizer="sentencepiece"))


def test_bad_vocab_files(tmp_path):
  gap = tmp_path / "gap.tiktoken"
  gap.write_text("IQ== 0\nIg== 2\n")
  with pytest.raises(ValueError, match="without gaps"):
    T.read_tiktoken_ranks(str(gap))
  junk = tmp_path / "junk.tiktoken"
  junk.write_text("IQ== 0\nnot base64 at all\n")
  with pytest.raises(ValueError, match="junk.tiktoken:2"):
    T.read_tiktoken_ranks(str(junk))
  short = tmp_path / "short.tiktoken"
  short.write_text("IQ== 0\nIg== 1\n")
  with pytest.raises(ValueError, match="2 BPE ranks, expected Qwen's 151643"):
    T.qwen_tokenizer(str(short))
  assert os.path.basename(T.packaged_qwen_vocab()) == "qwen.tiktoken"
