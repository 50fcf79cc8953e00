"""OpenAI audio request fields → whisper-server fields, and whisper-server replies → OpenAI replies."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec

from llama_host.errors import BadRequest

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain",  # whisper-server says text/html; Litestar adds "; charset=utf-8" to text/*
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt",
}
GRANULARITIES = ("word", "segment")

# whisper.cpp's languages (src/whisper.cpp g_lang): code → name. Both are accepted, as whisper.cpp does.
LANGUAGES = dict(item.split(":") for item in (
    "en:english,zh:chinese,de:german,es:spanish,ru:russian,ko:korean,fr:french,ja:japanese,pt:portuguese,"
    "tr:turkish,pl:polish,ca:catalan,nl:dutch,ar:arabic,sv:swedish,it:italian,id:indonesian,hi:hindi,fi:finnish,"
    "vi:vietnamese,he:hebrew,uk:ukrainian,el:greek,ms:malay,cs:czech,ro:romanian,da:danish,hu:hungarian,ta:tamil,"
    "no:norwegian,th:thai,ur:urdu,hr:croatian,bg:bulgarian,lt:lithuanian,la:latin,mi:maori,ml:malayalam,cy:welsh,"
    "sk:slovak,te:telugu,fa:persian,lv:latvian,bn:bengali,sr:serbian,az:azerbaijani,sl:slovenian,kn:kannada,"
    "et:estonian,mk:macedonian,br:breton,eu:basque,is:icelandic,hy:armenian,ne:nepali,mn:mongolian,bs:bosnian,"
    "kk:kazakh,sq:albanian,sw:swahili,gl:galician,mr:marathi,pa:punjabi,si:sinhala,km:khmer,sn:shona,yo:yoruba,"
    "so:somali,af:afrikaans,oc:occitan,ka:georgian,be:belarusian,tg:tajik,sd:sindhi,gu:gujarati,am:amharic,"
    "yi:yiddish,lo:lao,uz:uzbek,fo:faroese,ht:haitian creole,ps:pashto,tk:turkmen,nn:nynorsk,mt:maltese,"
    "sa:sanskrit,lb:luxembourgish,my:myanmar,bo:tibetan,tl:tagalog,mg:malagasy,as:assamese,tt:tatar,haw:hawaiian,"
    "ln:lingala,ha:hausa,ba:bashkir,jw:javanese,su:sundanese,yue:cantonese").split(","))
_LANGUAGE_NAMES = {name: code for code, name in LANGUAGES.items()}

# Fields this host decides; every other field is passed to whisper-server as sent (e.g. beam_size, no_timestamps).
CONTROLLED = frozenset({"model", "file", "language", "prompt", "response_format", "temperature", "translate",
                        "timestamp_granularities[]", "timestamp_granularities", "stream", "chunking_strategy",
                        "include[]", "include"})


class AudioOptions(msgspec.Struct, kw_only=True):
    response_format: str = "json"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    granularities: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()

    def runner_fields(self, *, translate: bool) -> list[tuple[str, str]]:
        """The fields whisper-server gets besides the file (the client's own copies of controlled fields are never
        forwarded, so there is one of each)."""
        out = [("response_format", self.response_format), ("language", self.language or "auto"),
               ("translate", "true" if translate else "false")]
        if self.prompt:
            out.append(("prompt", self.prompt))
        if self.temperature is not None:
            out.append(("temperature", repr(self.temperature)))
        names = {name for name, _ in self.extra}
        if self.response_format == "verbose_json" and "no_language_probabilities" not in names:
            out.append(("no_language_probabilities", "true"))  # spares a second language detection pass
        return [*out, *self.extra]


def parse_options(fields: Mapping[str, list[str]]) -> AudioOptions:
    """Validate the OpenAI fields (whichever have arrived); BadRequest names the field at fault."""

    def one(name: str) -> str | None:
        values = fields.get(name)
        return values[0].strip() if values else None

    fmt = (one("response_format") or "json").lower()
    if fmt not in RESPONSE_FORMATS:
        raise BadRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)} (got '{fmt}')",
                         param="response_format")
    language = one("language") or None
    if language is not None:
        language = language.lower()
        if language != "auto" and language not in LANGUAGES and language not in _LANGUAGE_NAMES:
            raise BadRequest(f"unsupported language '{language}': use an ISO-639-1 code such as 'en' or 'de'",
                             param="language")
    temperature = None
    if (raw := one("temperature")) not in (None, ""):
        try:
            temperature = float(raw)
        except ValueError:
            temperature = math.nan
        if not 0.0 <= temperature <= 1.0:
            raise BadRequest(f"temperature must be a number between 0 and 1 (got '{raw}')", param="temperature")
    granularities: list[str] = []
    for name in ("timestamp_granularities[]", "timestamp_granularities"):
        for value in fields.get(name, ()):
            for g in value.replace(",", " ").split():
                if g not in GRANULARITIES:
                    raise BadRequest(f"timestamp_granularities must be 'word' or 'segment' (got '{g}')",
                                     param="timestamp_granularities")
                granularities.append(g)
    if granularities and fmt != "verbose_json":
        raise BadRequest("timestamp_granularities needs response_format 'verbose_json'",
                         param="timestamp_granularities")
    if (one("stream") or "false").lower() in ("true", "1"):
        raise BadRequest("streaming transcriptions are not supported by whisper-server models", param="stream")
    extra = tuple((name, value) for name, values in fields.items() if name not in CONTROLLED for value in values)
    return AudioOptions(response_format=fmt, language=language, prompt=one("prompt") or None,
                        temperature=temperature, granularities=tuple(dict.fromkeys(granularities)), extra=extra)


def transcript_text(text: str) -> str:
    """whisper-server puts each segment on its own line (" Hello\n world.\n"); OpenAI gives one text ("Hello world.").
    Segments carry their own leading space where the language uses spaces, so the lines are joined as they are."""
    return "".join(text.splitlines()).strip()


def openai_reply(options: AudioOptions, body: bytes) -> bytes:
    """whisper-server's reply in OpenAI's shape: one trimmed text; srt and vtt pass as they are."""
    if options.response_format == "text":
        return (transcript_text(body.decode("utf-8", "replace")) + "\n").encode()
    if options.response_format not in ("json", "verbose_json"):
        return body
    try:
        reply = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    if not isinstance(reply, dict):
        return body
    text = transcript_text(str(reply.get("text") or ""))
    if options.response_format == "json":
        return msgspec.json.encode({"text": text})
    return msgspec.json.encode(_verbose(reply, text, options))


def _verbose(reply: dict[str, Any], text: str, options: AudioOptions) -> dict[str, Any]:
    segments, words = [], []
    for i, seg in enumerate(reply.get("segments") or ()):
        if not isinstance(seg, dict):
            continue
        start, end = float(seg.get("start") or 0.0), float(seg.get("end") or 0.0)
        segments.append({
            "id": seg.get("id", i), "seek": round(start * 100), "start": start, "end": end,
            "text": seg.get("text", ""), "tokens": seg.get("tokens") or [],
            "temperature": seg.get("temperature", 0.0), "avg_logprob": seg.get("avg_logprob", 0.0),
            "compression_ratio": seg.get("compression_ratio", 0.0),
            "no_speech_prob": seg.get("no_speech_prob", 0.0)})
        for w in seg.get("words") or ():
            if isinstance(w, dict) and "word" in w:
                words.append({"word": str(w["word"]).strip(), "start": float(w.get("start", start)),
                              "end": float(w.get("end", end))})
    out: dict[str, Any] = {"task": reply.get("task", "transcribe"), "language": reply.get("language", ""),
                           "duration": reply.get("duration", 0.0), "text": text}
    if "word" in options.granularities:
        out["words"] = words
    if not options.granularities or "segment" in options.granularities:
        out["segments"] = segments
    return out


def decode_failure_reason(lines: list[str]) -> str | None:
    """The runner's own words for an audio it could not read, from its log lines (``error: ...``)."""
    reasons = [line.split("error:", 1)[1].strip() for line in lines if line.lstrip().startswith("error:")]
    return "; ".join(dict.fromkeys(r for r in reasons if r)) or None
