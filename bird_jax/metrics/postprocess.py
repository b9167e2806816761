"""BiRD's post-processing of a decoded response (decoded WITHOUT skipping special tokens).

Steps, in order (docs/evaluation.md):
1. if ".<|im_end|>" occurs, keep the text before its first occurrence plus ".";
2. delete every "<|im_end|>" that is followed by a newline (together with that newline);
3. if the regex ``\\n(.*?)\\n`` (DOTALL) matches, keep its first group, i.e. the text
   between the first two newlines ("a\\n\\nb" becomes "");
4. delete every "<|endoftext|>";
5. strip surrounding whitespace.
Annotations (reference answers) are never post-processed.
"""

from __future__ import annotations

import re

from bird_jax.vocabulary import ENDOFTEXT, IM_END

_BETWEEN_NEWLINES = re.compile(r"\n(.*?)\n", re.DOTALL)


def postprocess_response(text: str) -> str:
  """The response string BiRD scores, from the raw decoded text."""
  if "." + IM_END in text:
    text = text.split("." + IM_END, 1)[0] + "."
  text = text.replace(IM_END + "\n", "")
  match = _BETWEEN_NEWLINES.search(text)
  if match is not None:
    text = match.group(1)
  text = text.replace(ENDOFTEXT, "")
  return text.strip()
