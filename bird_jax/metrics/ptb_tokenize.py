"""PTB tokenization as pycocoevalcap does it, without Java.

pycocoevalcap joins all captions with "\\n", runs Stanford CoreNLP 3.4.1's PTBTokenizer with
``-preserveLines -lowerCase`` and drops the punctuation tokens in ``PUNCTUATIONS``. This module
reproduces that pipeline: a longest-match lexer (JFlex semantics: the longest match wins, ties go
to the earlier rule, trailing context counts towards the length and is then given back) whose
rules follow the lexer's token classes, with PTB normalisations (brackets -> -LRB- etc., LaTeX
quotes, "--" dashes, "..." ellipses, currency, fractions), lower-casing and the punctuation filter.
Lines are tokenized as one stream, because abbreviation rules look past line ends.

Line breaks other than "\\n" (\\r, \\x0b, \\x0c, U+0085, U+2028, U+2029) would split a caption over
several output lines in the Java tool; ``sanitize`` turns them into spaces first.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import regex

# Tokens pycocoevalcap removes after tokenizing (compared case-sensitively, after lower-casing,
# so "-lrb-" etc. stay).
PUNCTUATIONS = frozenset([
  "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
  "...", ";"])

_LINE_BREAKS = regex.compile("[\r\x0b\x0c\x85\u2028\u2029]")

# --- token classes -------------------------------------------------------------------------
_D = r"[\p{Nd}\u07C0-\u07C9]"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_NEWLINE = r"(?:\r\n|\r|\n|\u2028|\u2029|\x0b|\x0c|\x85)"
_SPACENL = rf"(?:{_SPACE}|{_NEWLINE})"
_SGML_ATTR = r"[A-Za-z][A-Za-z0-9:_\-]*(?:=(?:\"[^\"\r\n>]*\"|'[^'\r\n>]*'|[^ \t\"'>\r\n]+))?"
_SGML = (rf"<(?:[!?][A-Za-z\-][^>\r\n]*|/?[A-Za-z][A-Za-z0-9:_.@\-]*(?:[ ]+{_SGML_ATTR})*[ ]*/?)>")
_SPLET = r"&[aeiouAEIOU](?i:acute|grave|uml);"
_WORDCHAR = (
  r"\p{L}|" + _SPLET + r"|[\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF"
  r"\u0300-\u036F\u0370-\u037D\u0384\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF"
  r"\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7"
  r"\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711"
  r"\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C"
  r"\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8"
  r"\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83"
  r"\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56"
  r"\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD]")
_WORD = rf"(?:{_WORDCHAR})+"
_LD = rf"(?:\p{{L}}|{_D})"
_APOS = r"(?:['\u0092\u2019]|(?i:&apos;))"
_APOSETC = rf"(?:{_APOS}|[\u0091\u2018\u201B])"
_HYPHEN = r"[\-_\u058A\u2010\u2011]"
_THING = (rf"(?:[dDoOlL]{_APOSETC}{_LD})?{_LD}+"
          rf"(?:{_HYPHEN}(?:[dDoOlL]{_APOSETC}{_LD})?{_LD}+)*")
_DOTTED = r"\p{L}[\p{L}\p{N}]*(?:\.\p{L}[\p{L}\p{N}]*)+"
_THINGA = r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"
_THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
_ACRO = (r"[A-Za-z](?:\.[A-Za-z])+|(?i:(?:canada|sino|korean|eu|japan|non)-u\.s"
         r"|u\.s\.-(?:u\.k|u\.s\.s\.r))")
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|(?:{_ACRO})\.))+"
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
_SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
_SREDAUX = rf"[nN]{_APOSETC}[tT]"
_APOWORD = (
  rf"{_APOS}[nN]{_APOS}?|[lLdDjJ]{_APOS}|(?i:dunkin){_APOS}|(?i:somethin){_APOS}|(?i:ol){_APOS}"
  rf"|{_APOS}(?i:em)|[A-HJ-XZn]{_APOSETC}\p{{L}}{{2}}\p{{L}}*|{_APOS}[2-9]0[sS]"
  rf"|{_APOS}(?i:till?)|\p{{L}}\p{{L}}*[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]\p{{L}}*"
  rf"|{_APOS}(?i:cause)|(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)")
_URL_END = r"[^ \t\n\f\r\"<>|.!?(){},\-]"
_FULLURL = rf"(?i:https?)://[^ \t\n\f\r\"<>|()]+{_URL_END}"
_LIKELYURL = (
  r"(?:(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})"
  r"|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){}\x2c-\x5f$]+\.)+(?i:com|net|org|edu)))"
  rf"(?:/[^ \t\n\f\r\"<>|()]+{_URL_END})?")
_EMAIL = (r"[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0]*@(?:[^ \t\n\f\r\"<>|().\u00A0]+\.)*"
          r"[^ \t\n\f\r\"<>|().\u00A0]+")
_TWITTER = rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{_WORD}"
_DATE = rf"{_D}{{1,2}}[\-/]{_D}{{1,2}}[\-/]{_D}{{2,4}}"
_NUM = rf"(?:{_D}+|{_D}*(?:[.:,\u00AD\u066B\u066C]{_D}+)+)"
_NUMBER = rf"[\-+]?{_NUM}"
_SUBSUPNUM = r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"
_FRAC = rf"(?:{_D}{{1,4}}[\- \u00A0])?{_D}{{1,4}}(?:\\?/|\u2044){_D}{{1,4}}"
_FRAC2 = r"[\u00BC\u00BD\u00BE\u2153-\u215E]"
_DOLSIGN = r"[A-Z]*\$|#"
_DOLSIGN2 = r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"
_TBSPEC = (r"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\.d\.s|pro-|anti-|s(?:&|&amp;)p-500"
           rf"|s(?:&|&amp;)ls)|(?i:cap){_APOS}[nN]|[cC]{_APOS}(?i:est)")
_TBSPEC2 = rf"{_APOS}[0-9][0-9]"
_ABMONTH = r"jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
_ABDAYS = r"mon|tue|tues|wed|thu|thurs|fri"
_ABSTATE = (r"ala|ariz|(?-i:A)rk|calif|colo|conn|dak|del|fla|ga|(?-i:I)ll|ind|kans?|ky|la|(?-i:M)ass|md|mich"
            r"|minn|(?-i:M)iss|mo|mont|neb|nev|okla|(?-i:O)re|pa|penn|tenn|tex|va|vt|(?-i:W)ash|wisc?|wyo")
_ABCOMP = r"inc|cos?|corp|pp?tys?|ltd|plc|bancorp|dept|bhd|assn|univ|intl|sys"
_ABNUM = r"tel|est|ext|sq"
_ABPTIT = r"jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq"
_ABBREV1 = (rf"(?i:(?:{_ABMONTH}|{_ABDAYS}|{_ABSTATE}|{_ABCOMP}|{_ABNUM}|{_ABPTIT}|etc|al|seq)"
            r"\.)")
_ABTITLE = (r"mr|mrs|ms|(?-i:M)iss|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev"
            r"|maj|sgt|cpl|pvt|mt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det")
_ABCOMP2 = r"invt|elec|natl|m(?-i:[ft])g"
_ABBREV4 = rf"(?:[A-Za-z]|(?i:{_ABTITLE}|vs|alex|wm|jos|cie|a\.k\.a|cf|treas|{_ABCOMP2})|{_ACRO})"
_ABBREV3 = r"(?i:ca|figs?|prop|nos?|art|bldg|pp|op|vols?|ph|ft)\."
_ACRONYM_NEXT = (
  r"[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er"
  r"|[H]ere|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\.|[M]s\.|[N]ow|[O]nce|[O]ne"
  r"|[O]ther|[O]ur|[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]hen|[T]here|[T]hese|[T]hey"
  r"|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou")
_SENTEND = rf"{_SPACENL}(?:{_SPACENL}|[A-Z]|{_SGML})"
_PHONE = (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])"
          r"[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}"
          r"\.[0-9]{3,5}")
_LDOTS = r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]"
_INSENTP = r"[,;:\u3001]"
_QUOTES = (rf"{_APOS}|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E"
           r"\u201F\u2039\u203A\u00AB\u00BB]{1,2}")
_DBLQUOT = r"\"|(?i:&quot;)"
_SMILEY = r"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]"
_ASIANSMILEY = (r"[\^x=~<>]\.[\^x=~<>]|[\-\^x=~<>']_[\-\^x=~<>']"
                r"|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)")
_MISCSYMBOL = (
  r"[+%&~\^|\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7"
  r"\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B"
  r"\u061E\u066A\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017"
  r"\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F"
  r"\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")


@dataclasses.dataclass(frozen=True)
class _Rule:
  body: str
  action: str = "keep"
  context: str | None = None   # trailing context: counts for the match length, then given back
  keep: int = 0                # >0: emit only the first `keep` chars, re-lex the rest
  drop: int = 0                # >0: emit the text, then re-lex its last `drop` chars


# Rules in priority order (earlier wins ties of equal length).
_RULES: tuple[_Rule, ...] = (
  _Rule(r"(?i:c\+\+|[cf]#)"),
  _Rule(r"(?i:cannot)", keep=3),
  _Rule(r"(?i:gonna|gotta|lemme|gimme|wanna)", keep=3),
  _Rule(rf"{_APOS}(?i:tis)", keep=2),
  _Rule(rf"{_APOS}(?i:twas)", keep=2),
  _Rule(_SGML, "sgml"),
  _Rule(r"(?i:&(?:md|mdash|ndash);)|[\u0096\u0097\u2013\u2014\u2015]", "dash"),
  _Rule(r"(?i:&amp;)", "amp"),
  _Rule(r"(?i:&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);)"),
  _Rule(_WORD, "word", context=_REDAUX),
  _Rule(_SWORD, "word", context=_SREDAUX),
  _Rule(_WORD, "word"),
  _Rule(_APOWORD),
  _Rule(rf"[yY]{_APOS}", context=r"\p{L}"),
  _Rule(_FULLURL),
  _Rule(_LIKELYURL),
  _Rule(_EMAIL),
  _Rule(_TWITTER),
  _Rule(_REDAUX, "rquote", context=r"[^A-Za-z]"),
  _Rule(_SREDAUX, "rquote"),
  _Rule(_DATE),
  _Rule(_NUMBER, "word"),
  _Rule(_SUBSUPNUM),
  _Rule(_FRAC, "frac"),
  _Rule(_FRAC2, "frac2"),
  _Rule(_TBSPEC, "amp"),
  _Rule(_THING3),
  _Rule(_DOLSIGN),
  _Rule(_DOLSIGN2, "currency"),
  _Rule(r"[A-Za-z]\.", context=rf"{_SPACE}+(?:{_ACRONYM_NEXT}|{_SGML}){_SPACENL}", keep=1),
  _Rule(rf"(?:{_ACRO})\.", context=rf"{_SPACE}+(?:{_ACRONYM_NEXT}|{_SGML}){_SPACENL}", drop=1),
  _Rule(_ABBREV1, context=_SENTEND, drop=1),
  _Rule(_ABBREV1, context=rf"{_SPACENL}*\Z", drop=1),
  _Rule(_ABBREV1),
  _Rule(rf"{_ABBREV4}\."),
  _Rule(_ABBREV3, context=rf"{_SPACE}*{_D}"),
  _Rule(_ABBREV4, context=_SPACE),
  _Rule(_ACRO, context=_SPACENL),
  _Rule(_TBSPEC2, context=_SPACENL),
  _Rule(rf"{_WORD}\.", "word", context=_INSENTP),
  _Rule(_PHONE, "phone"),
  _Rule(_DBLQUOT, "lquote", context=r"[A-Za-z0-9$]"),
  _Rule(_DBLQUOT, "rquote"),
  _Rule(_SMILEY, "paren", context=r"[^\p{L}\p{N}]"),
  _Rule(_ASIANSMILEY, "paren"),
  _Rule(r"\x7f", "skip"),
  _Rule(r"\[", "const:-LSB-"),
  _Rule(r"\]", "const:-RSB-"),
  _Rule(r"<<|>>"),
  _Rule(r"<|(?i:&lt;)", "const:<"),
  _Rule(r">|(?i:&gt;)", "const:>"),
  _Rule(r"\{", "const:-LCB-"),
  _Rule(r"\}", "const:-RCB-"),
  _Rule(r"\(", "const:-LRB-"),
  _Rule(r"\)", "const:-RRB-"),
  _Rule(r"-+", "hyphens"),
  _Rule(_LDOTS, "const:..."),
  _Rule(r"@+|#+|_+"),
  _Rule(r"\*+|(?:\\\*){1,3}"),
  _Rule(_INSENTP),
  _Rule(r"[?!]+"),
  _Rule(r"[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]"),
  _Rule(r"="),
  _Rule(r"/"),
  _Rule(rf"{_HTHING}\.", "word", context=_INSENTP),
  _Rule(_HTHING, "word"),
  _Rule(_DOTTED),
  _Rule(rf"{_THING}\.", context=_INSENTP),
  _Rule(_THING),
  _Rule(rf"{_THINGA}\.", "amp", context=_INSENTP),
  _Rule(_THINGA, "amp"),
  _Rule(r"'", "lquote", context=r"[A-Za-z][^ \t\n\r\u00A0]"),
  _Rule(_REDAUX, "rquote"),
  _Rule(_QUOTES, "rquote"),
  _Rule(_MISCSYMBOL),
  _Rule(rf"\x00|{_SPACE}+|[\u200B\u200E\u200F\uFEFF]", "skip"),
  _Rule(_NEWLINE, "newline"),
  _Rule(r"(?i:&nbsp;)", "skip"),
  _Rule(r"(?s:.)", "skip"),
)


def _alternation(indices: Sequence[int]) -> regex.Pattern:
  """POSIX (leftmost-longest) alternation of the given rules; group r<i> = rule i's token."""
  parts = []
  for i in indices:
    rule = _RULES[i]
    ctx = f"(?:{rule.context})" if rule.context else ""
    parts.append(f"(?P<a{i}>(?P<r{i}>{rule.body}){ctx})")
  return regex.compile("(?p)" + "|".join(parts), regex.V0)


@functools.cache
def _compiled_rules() -> tuple[regex.Pattern, ...]:
  return tuple(regex.compile(f"(?:{r.body})" + (f"(?:{r.context})" if r.context else ""))
               for r in _RULES)


@functools.cache
def _full_alternation() -> regex.Pattern:
  return _alternation(range(len(_RULES)))


@functools.cache
def _alternation_for(c: str) -> regex.Pattern:
  """The alternation of the rules that can start with character ``c`` (partial matching)."""
  if not c.isascii():
    return _full_alternation()
  return _alternation([i for i, p in enumerate(_compiled_rules())
                       if p.match(c, partial=True) is not None])


_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$",
             "\u20AC": "$"}
_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3"}
_LATEX_COMMON = str.maketrans({
  "\u0091": "`", "\u2018": "`", "\u201B": "`", "\u2039": "`", "\u0092": "'", "\u2019": "'",
  "\u203A": "'", "\u0093": "``", "\u201C": "``", "\u00AB": "``", "\u0094": "''", "\u201D": "''",
  "\u00BB": "''"})
_AMP = regex.compile(r"(?i)&amp;")
_APOS_ENTITY = regex.compile(r"(?i)&apos;|'")
_QUOT_ENTITY = regex.compile(r"(?i)&quot;|\"")


def _latex_quotes(tok: str, left: bool) -> str:
  tok = _APOS_ENTITY.sub("`" if left else "'", tok)
  tok = _QUOT_ENTITY.sub("``" if left else "''", tok)
  return tok.translate(_LATEX_COMMON)


def _apply(action: str, text: str) -> str | None:
  """Token text for a rule's action (None: no token)."""
  if action == "keep":
    return text
  if action == "word":
    out = text.replace("\u00AD", "")
    return out if out else "-"
  if action == "sgml":
    return text.replace(" ", "\u00A0")
  if action == "dash":
    return "--"
  if action == "amp":
    return _AMP.sub("&", text)
  if action == "lquote":
    return _latex_quotes(text, True)
  if action == "rquote":
    return _latex_quotes(text, False)
  if action == "frac":
    return text.replace(" ", "\u00A0")
  if action == "frac2":
    return "".join(_FRACTIONS.get(c, c) for c in text)
  if action == "currency":
    return "".join(_CURRENCY.get(c, c) for c in text)
  if action == "phone":
    return text.replace(" ", "\u00A0").replace("(", "-LRB-").replace(")", "-RRB-")
  if action == "paren":
    return text.replace("(", "-LRB-").replace(")", "-RRB-")
  if action == "hyphens":
    return "--" if 3 <= len(text) <= 4 else text
  if action.startswith("const:"):
    return action[6:]
  return None  # skip / newline


def _lex(text: str, pos: int, stop: int, lines: list[list[str]]) -> int:
  """Runs the lexer from ``pos`` until a token ends at or after ``stop``; returns the new pos."""
  while pos < stop:
    m = _alternation_for(text[pos]).match(text, pos)
    i = int(m.lastgroup[1:])
    rule = _RULES[i]
    tok = m.group(f"r{i}")
    if rule.keep:
      tok = tok[:rule.keep]
    if rule.action == "newline":
      lines.append([])
    else:
      out = _apply(rule.action, tok)
      if out is not None:
        lines[-1].append(out)
    pos += len(tok) - rule.drop
  return pos


_CHUNK = regex.compile(r"[^ \t\n]+")
_UNCLOSED_LT = regex.compile(r"<[^>]*$")


def _chunk_key(text: str, chunk: str, end: int) -> tuple | None:
  """Cache key for a whitespace-delimited chunk whose tokens depend only on the key.

  None when a token may cross into the next chunk (tags with spaces, phone numbers,
  fractions like "1 1/2", spaced ellipses) or a look-ahead may reach beyond the next chunk.
  """
  if _UNCLOSED_LT.search(chunk):
    return None
  last = chunk[-1]
  if "." not in chunk and last != ")" and not last.isdigit():
    return (chunk, text[end:end + 1])
  nxt = _CHUNK.search(text, end)
  if nxt is not None:
    following = nxt.group()
    if last == ")" or last.isdigit():
      if following[0].isdigit():
        return None
    if last == "." and following[0] == ".":
      return None
  if "." not in chunk:
    return (chunk, text[end:end + 1])
  if nxt is None:
    return (chunk, text[end:])
  if _UNCLOSED_LT.search(nxt.group()):
    return None
  if "a" <= nxt.group()[0] <= "z":
    # every look-ahead that gets past the space wants a capital, digit, "<" or more space
    return (chunk, text[end:nxt.start()] + "a")
  return (chunk, text[end:nxt.end() + 1])


_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_TO_FIVE = str.maketrans("0123456789", "5555555555")
_ASCII_DIGIT = regex.compile(r"[0-9]")
_DIGIT_SENSITIVE = regex.compile(r"['\u0092\u2019&\u00BC\u00BD\u00BE\u2153-\u215E]")


def _shape(canon: str) -> tuple[int, bool]:
  """What a chunk's key needs, from the chunk with its ASCII digits as "5": 0 no key (lex
  it), 1 the next character, 2 more (``_chunk_key``); and whether its digits are
  canonicalised (it has some, and no rule that distinguishes digits applies)."""
  last = canon[-1]
  if _UNCLOSED_LT.search(canon):
    kind = 0
  elif "." not in canon and last != ")" and not last.isdigit():
    kind = 1
  else:
    kind = 2
  return kind, "5" in canon and not _DIGIT_SENSITIVE.search(canon)


def _template(tokens: list[str]) -> str:
  """Format string of tokens whose ASCII digits are "5" (placeholders), joined by newlines
  (which no token contains)."""
  return "\n".join(tokens).replace("{", "{{").replace("}", "}}").replace("5", "{}")


def ptb_tokens(text: str, cache: dict | None = None) -> list[list[str]]:
  """Lexes ``text`` into lines of PTB tokens (original case, before punctuation removal).

  Speed-ups that do not change the result: a chunk of letters only is one token (unless it
  is an assimilation like "cannot"); other whitespace-delimited chunks whose tokens cannot
  depend on more than ``_chunk_key`` are lexed once, with ASCII digits canonicalised when no
  rule distinguishes them (no apostrophes, entities or fraction characters), and reused.
  ``cache`` (chunk key -> tokens) may be shared between calls.
  """
  cache = {} if cache is None else cache
  shapes: dict[str, tuple[int, bool]] = {}
  lines: list[list[str]] = [[]]
  pos = 0                                      # the lexer's position
  base = 0                                     # start of the current line in ``text``
  tabs = "\t" in text                          # chunks end at spaces, tabs and newlines
  for k, line in enumerate(text.replace("\t", " ").split("\n") if tabs else text.split("\n")):
    if k and pos < base:                       # else the lexer took this "\n" (in "\r\n")
      lines.append([])
    start = base
    base += len(line) + 1
    if not line:
      continue
    for chunk in line.split(" "):
      end = start + len(chunk)
      if not chunk:
        start = end + 1
        continue
      if pos > start:                          # the previous token ran into this chunk
        if pos < end:
          pos = _lex(text, pos, end, lines)
        start = end + 1
        continue
      if chunk.isalpha() and chunk.lower() not in _ASSIMILATIONS:
        lines[-1].append(chunk)
        pos = end
        start = end + 1
        continue
      canon = chunk.translate(_TO_FIVE)
      shape = shapes.get(canon)
      if shape is None:
        shape = shapes[canon] = _shape(canon)
      if shape[0] == 1:
        key = (chunk, text[end:end + 1])
      else:
        key = _chunk_key(text, chunk, end) if shape[0] == 2 else None
        if key is None:
          pos = _lex(text, start, end, lines)
          start = end + 1
          continue
      digits = None
      if shape[1]:
        digits = _ASCII_DIGIT.findall(chunk)
        key = (canon, key[1])
      toks = cache.get(key)
      if toks is None:
        tmp: list[list[str]] = [[]]
        pos = _lex(text, start, end, tmp)
        lines[-1].extend(tmp[0])
        lines.extend(tmp[1:])
        if pos == end and len(tmp) == 1 and not any("\n" in t for t in tmp[0]):
          cache[key] = _template([t.translate(_TO_FIVE) for t in tmp[0]]) if digits else tmp[0]
        start = end + 1
        continue
      if digits is None:
        lines[-1].extend(toks)
      elif toks:
        lines[-1].extend(toks.format(*digits).split("\n"))
      pos = end
      start = end + 1
  return lines


def sanitize(caption: str) -> str:
  """pycocoevalcap's "\\n" -> " " plus the other characters Java treats as line breaks."""
  return _LINE_BREAKS.sub(" ", caption.replace("\n", " "))


def tokenize_captions(captions: Sequence[str], cache: dict | None = None) -> list[str]:
  """pycocoevalcap PTBTokenizer output for each caption: lower-cased tokens joined by spaces.
  ``cache`` (see ``ptb_tokens``) may be shared between calls, e.g. across modalities."""
  text = "\n".join(sanitize(c) for c in captions)
  lines = ptb_tokens(text, cache)
  out = []
  for i in range(len(captions)):
    line = " ".join(lines[i]).lower() if i < len(lines) else ""
    out.append(" ".join([w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS]))
  return out
