"""kv-notes: a small note store in the plugin's private key-value storage.

Hooks (JSON in, JSON out):

- ``notes.put``     ``{"title": "...", "body": "..."}`` -> ``{"title", "created": true|false}``;
  stores the note (replacing one with the same title) and emits ``notes.changed``.
- ``notes.get``     ``{"title": "..."}`` -> the note ``{"title", "body", "updated_ns"}``, or
  the error ``not-found``.
- ``notes.list``    ``{"prefix": "..."}`` (optional) -> ``{"titles": [...]}`` in byte order.
- ``notes.delete``  ``{"title": "..."}`` -> ``{"deleted": true|false}``; emits
  ``notes.changed`` when something was deleted.

Each note is one key, ``note:<title>``, holding the note as JSON. The manifest's kv quota
(16 KiB, 20 keys) makes a full store answer ``limit-reached``.
"""

from plugbox_sdk import InvalidInputError, NotFoundError, clock, events, hook, kv, log

_PREFIX = "note:"
#: Keys are at most 256 UTF-8 bytes; the prefix takes 5.
_MAX_TITLE_BYTES = 251


def _title(value: object) -> str:
    """The note title from the payload, validated."""
    if not isinstance(value, dict) or not isinstance(value.get("title"), str):
        raise InvalidInputError('expected a JSON object with a string field "title"')
    title = value["title"].strip()
    if not title:
        raise InvalidInputError("the title must not be empty")
    if len(title.encode()) > _MAX_TITLE_BYTES:
        raise InvalidInputError(f"the title must be at most {_MAX_TITLE_BYTES} bytes of UTF-8")
    return title


@hook("notes.put", json=True)
def put(value: object) -> dict:
    """Create or replace a note."""
    title = _title(value)
    body = value.get("body", "") if isinstance(value, dict) else ""
    if not isinstance(body, str):
        raise InvalidInputError('"body" must be a string')
    created = kv.get(_PREFIX + title) is None
    kv.set_json(_PREFIX + title, {"title": title, "body": body, "updated_ns": clock.now()})
    events.emit("notes.changed", {"title": title, "change": "created" if created else "updated"})
    log.info(f"{'created' if created else 'updated'} note {title!r}")
    return {"title": title, "created": created}


@hook("notes.get", json=True)
def get(value: object) -> dict:
    """One note by title."""
    title = _title(value)
    note = kv.get_json(_PREFIX + title)
    if note is None:
        raise NotFoundError(f"no note titled {title!r}")
    return note


@hook("notes.list", json=True)
def list_notes(value: object) -> dict:
    """The titles of all notes (or those starting with ``prefix``)."""
    prefix = value.get("prefix", "") if isinstance(value, dict) else ""
    if not isinstance(prefix, str):
        raise InvalidInputError('"prefix" must be a string')
    return {"titles": [key[len(_PREFIX):] for key in kv.list_keys(_PREFIX + prefix)]}


@hook("notes.delete", json=True)
def delete(value: object) -> dict:
    """Delete a note; deleting a missing note is not an error."""
    title = _title(value)
    deleted = kv.delete(_PREFIX + title)
    if deleted:
        events.emit("notes.changed", {"title": title, "change": "deleted"})
    return {"deleted": deleted}
