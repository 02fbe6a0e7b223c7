"""What the captioning model is asked. One system line, one instruction per mode (tags / tags+lyrics).

The model answers in JSON, as in the woct0rdho fork's `generate_prompts_lyrics.py`: separate fields
keep lyrics apart from tags and say whether there is a voice, and `acetune.captioning.tags` turns
the fields into the comma-separated tag line ACE-Step was trained on (it wants tags, not
sentences). No BPM or key is asked: `acetune.audio.analysis` measures those far more accurately.
"""

from __future__ import annotations

SYSTEM_PROMPT = ("You are a music tagging assistant. You listen to an audio recording and describe it "
                 "with short tags. You answer with JSON only.")

_FIELDS = """\
- "genre": the main genres, e.g. ["pop", "synthwave"].
- "subgenre": more specific styles or production techniques.
- "instrument": every instrument you can hear, except the voice.
- "tempo": words for the pace, e.g. ["slow"], ["mid-tempo", "driving"]. No numbers, no BPM.
- "mood": words for the mood, e.g. ["melancholic", "dreamy"].
- "has_vocal": true if any voice sings, raps or speaks, otherwise false.
- "vocal": if there is a voice, tags for it, e.g. ["female", "breathy", "rap"]; otherwise []."""

TAGS_PROMPT = f"""Listen to the audio and fill in these fields. Each tag is one to three lower-case words.
{_FIELDS}

Answer with one JSON object and nothing else:
{{"genre": [...], "subgenre": [...], "instrument": [...], "tempo": [...], "mood": [...], "has_vocal": true, "vocal": [...]}}"""

LYRICS_PROMPT = f"""Listen to the audio and fill in these fields. Each tag is one to three lower-case words.
{_FIELDS}
- "lyrics": if there is a voice, transcribe the words in their original language, one sung line per
  line, with a structure tag on its own line before each section: [verse], [chorus], [pre-chorus],
  [bridge], [intro], [outro]. If there is no voice, "".

Answer with one JSON object and nothing else:
{{"genre": [...], "subgenre": [...], "instrument": [...], "tempo": [...], "mood": [...], "has_vocal": true, "vocal": [...], "lyrics": "..."}}"""

# The order tag groups are read from the answer (tags are shuffled in training anyway).
TAG_FIELDS = ("genre", "subgenre", "instrument", "tempo", "mood", "vocal")


def instruction(with_lyrics: bool) -> str:
    """The user-turn instruction sent with each audio chunk."""
    return LYRICS_PROMPT if with_lyrics else TAGS_PROMPT
