"""Adapter hot load: watch the adapters file, verify and load new adapters into vLLM, unload removed ones.

The operator writes the wanted set into a ConfigMap mounted in the pod::

    {"adapters": [{"name": "support-bot", "source": "file:///...", "signature": "support-bot.sig"}]}

``signature`` is the path of the adapter's OMS bundle (relative paths are relative to the adapters file's directory)
or null when the Model's signature policy is Disabled. Adapters are verified against every key the pod trusts (all
``--trusted-key``s: the tenant's keys, not only the model signer's), also when the model itself is not signed.
The identity of a wanted adapter includes the sha256 of its bundle's content: a new bundle for the same URI is
re-verified and reloaded, so replicas converge on the version the bundle names. If verification of a wanted adapter
fails (a new bundle, or a policy tightened from Disabled to Required), the version loaded so far is unloaded: an
adapter whose required signature does not verify is never served. Other failures (source unreachable, engine
refusal) keep a verified previous version serving.
Also accepted: ``source`` as the API's ``{"uri": ..., "revision": ...}`` and ``signature`` as an object with
``"policy": "Disabled"`` (= null) or ``"path"``; any other signature object (a ``bundleRef`` or ``uri`` the pod cannot
read) makes that adapter fail closed, with the reason reported.

Every ``audit_interval`` seconds (5) the engine's own list of adapters (``GET /v1/models``: LoRA cards carry a
``parent``) is compared with the set this runtime verified and loaded; anything else — loaded through the
management route by someone holding the guard token, e.g. from ``kubectl exec`` — is unloaded and reported
(``foreignUnloaded`` in the report, a counter and an error in the log).

The file is read every ``poll_interval`` seconds and compared by content (a ConfigMap update swaps a symlink, so
mtimes are not reliable). Each change is reconciled: removed adapters are unloaded, new or changed ones fetched,
verified and loaded with vLLM's runtime LoRA API (``/v1/load_lora_adapter``, which needs
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora``). A failed adapter is reported and retried later; the
others keep serving. An unreadable or invalid file changes nothing (the error is reported).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .metrics import RuntimeMetrics

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
RETRY_SECONDS = 30.0
AUDIT_SECONDS = 5.0  # issue 18: an adapter the runtime did not verify is unloaded within ≤ 10 s


class AdapterFileError(Exception):
    pass


class AdapterVerificationError(RuntimeError):
    """The adapter's bytes do not verify against its bundle (or the bundle against the trusted keys)."""


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    source: str
    signature: Path | None
    revision: str | None = None
    # sha256 of the bundle's content when the file was read ("" if unreadable): part of the adapter's identity
    signature_digest: str | None = None


def _bundle_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""  # verification will report why it cannot be read


@dataclass
class Loaded:
    spec: AdapterSpec
    path: str
    verification: dict[str, Any] | None
    since: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "source": self.spec.source,
            "path": self.path,
            "verified": self.verification is not None,
            "verification": self.verification,
            "since": self.since,
        }


@dataclass
class Failed:
    spec: AdapterSpec
    reason: str
    next_retry: float
    since: float = field(default_factory=time.time)

    def to_json(self, still_loaded: bool) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "source": self.spec.source,
            "reason": self.reason,
            "since": self.since,
            # an update of a loaded adapter failed: its previous version keeps serving
            "previousVersionLoaded": still_loaded,
        }


def parse_adapters(raw: bytes, base_dir: Path) -> tuple[list[AdapterSpec], dict[str, str]]:
    """Parse an adapters file. Returns (valid specs, {name: reason} of invalid entries).

    Raises AdapterFileError when the file as a whole is unusable."""
    try:
        doc = json.loads(raw.decode("utf-8")) if raw.strip() else {"adapters": []}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterFileError(f"adapters file is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("adapters", []), list):
        raise AdapterFileError('adapters file must be {"adapters": [...]}')
    specs: list[AdapterSpec] = []
    invalid: dict[str, str] = {}
    seen: set[str] = set()
    for i, item in enumerate(doc.get("adapters") or []):
        name = item.get("name") if isinstance(item, dict) else None
        key = name if isinstance(name, str) and name else f"#{i}"
        if not isinstance(item, dict):
            invalid[key] = "entry is not an object"
            continue
        if not isinstance(name, str) or not NAME_RE.match(name):
            invalid[key] = f"invalid adapter name {name!r}"
            continue
        if name in seen:
            invalid[name] = "duplicate adapter name"
            continue
        seen.add(name)
        source, revision = item.get("source"), None
        if isinstance(source, dict):  # also accepted: the API's AdapterSource {"uri": ..., "revision": ...}
            source, revision = source.get("uri"), source.get("revision")
        if not isinstance(source, str) or not source:
            invalid[name] = "missing source"
            continue
        sig = item.get("signature")
        if isinstance(sig, dict):  # also accepted: a SignatureSpec-like object
            if sig.get("policy") == "Disabled":
                sig = None
            elif isinstance(sig.get("path"), str):
                sig = sig["path"]
            else:
                invalid[name] = ("signature must be the path of the adapter's bundle in the pod (or null); "
                                 f"cannot resolve {json.dumps(sig, sort_keys=True)}")
                continue
        if sig is not None and not isinstance(sig, str):
            invalid[name] = "signature must be a path or null"
            continue
        sig_path = None
        if sig:
            sig_path = Path(sig)
            if not sig_path.is_absolute():
                sig_path = base_dir / sig_path
        specs.append(AdapterSpec(name=name, source=source, signature=sig_path,
                                 revision=revision if isinstance(revision, str) and revision else None,
                                 signature_digest=_bundle_digest(sig_path)))
    return specs, invalid


# (spec) -> (local dir, verification summary or None); raises on failure with a one-line message
Preparer = Callable[[AdapterSpec], Awaitable[tuple[Path, dict[str, Any] | None]]]
# (local dir) -> None: the directory a preparer returned is not loaded (any more)
Releaser = Callable[[str], None]


class AdapterManager:
    def __init__(
        self,
        path: Path,
        *,
        engine_url: str,
        prepare: Preparer,
        metrics: RuntimeMetrics,
        served_name: str,
        lora_enabled: bool = True,
        poll_interval: float = 1.0,
        on_change: Callable[[], None] | None = None,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        release: Releaser | None = None,
        audit_interval: float = AUDIT_SECONDS,
    ):
        self.path = path
        self.engine_url = engine_url.rstrip("/")
        self.prepare = prepare
        self.metrics = metrics
        self.served_name = served_name
        self.lora_enabled = lora_enabled
        self.poll_interval = poll_interval
        self.on_change = on_change  # called after every reconcile that did something (e.g. to report on the pod)
        self.release = release or (lambda _path: None)
        self.loaded_: dict[str, Loaded] = {}  # what the engine has
        self.failed: dict[str, Failed] = {}  # last failed attempt per wanted name
        self.file_error: str | None = None
        self.generation: str | None = None  # sha256 of the last file content reconciled
        self.reconciled_at: float | None = None
        self.audit_interval = audit_interval
        self.foreign_unloaded: dict[str, float] = {}  # name → when an adapter the runtime did not load was unloaded
        self._wanted: list[AdapterSpec] = []
        self._invalid: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        # vLLM's --api-key guards /v1/*: the runtime's own adapter calls carry it
        self._headers = dict(headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    # ---- reporting -------------------------------------------------------------------------------------------
    def loaded(self) -> list[str]:
        return sorted(self.loaded_)

    def report(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "file": str(self.path),
            "generation": self.generation,
            "reconciledAt": self.reconciled_at,
            "fileError": self.file_error,
            "loaded": [self.loaded_[n].to_json() for n in sorted(self.loaded_)],
            "foreignUnloaded": sorted(self.foreign_unloaded),
            "failed": [self.failed[n].to_json(n in self.loaded_) for n in sorted(self.failed)]
            + [{"name": n, "source": None, "reason": r, "previousVersionLoaded": n in self.loaded_}
               for n, r in sorted(self._invalid.items())],
        }

    def failures(self) -> dict[str, str]:
        """{name: reason} of every wanted adapter that is not serving as wanted."""
        out = {n: f.reason for n, f in self.failed.items()}
        out.update(self._invalid)
        return out

    def _publish(self) -> None:
        self.metrics.adapters_loaded.set(len(self.loaded_))
        self.metrics.adapters_failed.set(len(self.failed) + len(self._invalid))

    # ---- engine API ------------------------------------------------------------------------------------------
    async def _post(self, path: str, payload: dict[str, Any]) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        async with self._session.post(self.engine_url + path, json=payload, headers=self._headers) as r:
            return r.status, (await r.text())

    @staticmethod
    def _engine_error(status: int, text: str) -> str:
        try:
            msg = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = text.strip()
        if status == 404 and not msg:
            msg = "engine has no runtime LoRA API (needs --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING)"
        return f"engine refused the adapter (HTTP {status}): {msg}".splitlines()[0][:500]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # ---- reconcile -------------------------------------------------------------------------------------------
    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    async def reconcile(self, force: bool = False) -> bool:
        """Read the file and bring the engine in line with it. Returns True if anything was attempted."""
        async with self._lock:
            try:
                raw = self.read()
            except OSError as e:
                self.file_error = f"cannot read adapters file: {e.strerror or e}"
                return False
            content = raw if raw is not None else b""
            # the bundles the file names are part of what is wanted: a new bundle for the same URI is a change
            gen = hashlib.sha256(content + b"".join(
                (s.signature_digest or "-").encode() for s in self._wanted_for(content))).hexdigest()
            now = time.time()
            wanted_names = {s.name for s in self._wanted}
            retry_due = any(f.next_retry <= now for f in self.failed.values()) or any(
                n not in wanted_names for n in self.loaded_  # an unload that failed earlier
            )
            if gen == self.generation and not force and not retry_due:
                return False
            if gen != self.generation:
                try:
                    specs, invalid = parse_adapters(content, self.path.parent)
                except AdapterFileError as e:
                    if self.file_error != str(e):
                        log.error("%s; keeping the current adapters", e)
                    self.file_error = str(e)
                    self.generation = gen
                    return False
                self.file_error = None
                for name in invalid:
                    log.error("adapter %s: %s", name, invalid[name])
                if any(s.name == self.served_name for s in specs):
                    specs = [s for s in specs if s.name != self.served_name]
                    invalid[self.served_name] = "adapter name equals the served model name"
                self._wanted, self._invalid = specs, invalid
                self.generation = gen
            await self._apply(self._wanted)
            self.reconciled_at = time.time()
            self._publish()
        if self.on_change is not None:
            self.on_change()
        return True

    def _wanted_for(self, content: bytes) -> list[AdapterSpec]:
        try:
            return parse_adapters(content, self.path.parent)[0]
        except AdapterFileError:
            return []

    async def _apply(self, wanted: list[AdapterSpec]) -> None:
        wanted_by_name = {s.name: s for s in wanted}
        for name in [n for n in self.failed if n not in wanted_by_name]:
            del self.failed[name]
        # 1. unload what is no longer wanted (frees engine slots before loading new ones)
        for name in [n for n in self.loaded_ if n not in wanted_by_name]:
            await self._unload(name)
        # 2. load what is new or changed; retry failures that are due
        now = time.time()
        for spec in wanted:
            cur = self.loaded_.get(spec.name)
            if cur is not None and cur.spec == spec:
                self.failed.pop(spec.name, None)
                continue
            f = self.failed.get(spec.name)
            if f is not None and f.spec == spec and f.next_retry > now:
                continue
            await self._load(spec, replace=cur is not None)

    async def _unload(self, name: str) -> None:
        try:
            status, text = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        except (TimeoutError, aiohttp.ClientError) as e:
            log.error("unloading adapter %s failed: %s (will retry)", name, e)
            return
        if status in (200, 404):  # 404: the engine does not have it (any more)
            log.info("unloaded adapter %s", name)
            self.release(self.loaded_.pop(name).path)
        else:
            log.error("unloading adapter %s failed: %s", name, self._engine_error(status, text))

    async def _load(self, spec: AdapterSpec, *, replace: bool) -> None:
        started = time.monotonic()
        path: Path | None = None
        try:
            if not self.lora_enabled:
                raise RuntimeError("engine started without --enable-lora")
            path, verification = await self.prepare(spec)
            payload: dict[str, Any] = {"lora_name": spec.name, "lora_path": str(path)}
            if replace:
                payload["load_inplace"] = True  # swap weights without a window where the name is unknown
            status, text = await self._post("/v1/load_lora_adapter", payload)
            if status != 200:
                raise RuntimeError(self._engine_error(status, text))
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the others
            if path is not None:
                self.release(str(path))
            reason = (str(e) or type(e).__name__).splitlines()[0]
            prev = self.loaded_.get(spec.name)
            if replace and prev is not None and (
                isinstance(e, AdapterVerificationError) or (spec.signature is not None and prev.verification is None)
            ):
                # the wanted version requires a signature that does not verify (or the loaded one was never
                # verified): nothing of this adapter may keep serving
                log.error("adapter %s: verification failed, unloading the version loaded so far: %s", spec.name,
                          reason)
                await self._unload(spec.name)
            elif replace:
                log.error("adapter %s: update failed, its previous version keeps serving: %s", spec.name, reason)
            else:
                log.error("adapter %s failed: %s", spec.name, reason)
            prev = self.failed.get(spec.name)
            since = prev.since if prev is not None and prev.spec == spec and prev.reason == reason else time.time()
            self.failed[spec.name] = Failed(spec, reason, next_retry=time.time() + RETRY_SECONDS, since=since)
            self.metrics.adapter_loads.labels(result="failed").inc()
            return
        old = self.loaded_.get(spec.name)
        self.loaded_[spec.name] = Loaded(spec, str(path), verification)
        if old is not None and old.path != str(path):
            self.release(old.path)
        self.failed.pop(spec.name, None)
        elapsed = time.monotonic() - started
        self.metrics.adapter_loads.labels(result="loaded").inc()
        self.metrics.adapter_load_seconds.observe(elapsed)
        log.info("loaded adapter %s from %s in %.2fs", spec.name, spec.source, elapsed)

    async def audit(self) -> list[str]:
        """Unload every adapter the engine serves that this runtime did not verify and load; their names."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        async with self._lock:  # not while a load is half done (the engine has it, loaded_ not yet)
            async with self._session.get(self.engine_url + "/v1/models", headers=self._headers,
                                         timeout=aiohttp.ClientTimeout(total=10)) as r:
                if r.status != 200:
                    return []
                cards = (await r.json()).get("data") or []
            foreign = [c["id"] for c in cards if isinstance(c, dict) and c.get("parent")
                       and isinstance(c.get("id"), str) and c["id"] not in self.loaded_]
            for name in foreign:
                log.error("adapter %s is loaded in the engine but was not verified and loaded by the runtime: "
                          "unloading it", name)
                status, text = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
                if status == 200:
                    self.foreign_unloaded[name] = time.time()
                    self.metrics.adapters_foreign_unloaded.inc()
                else:
                    log.error("unloading foreign adapter %s failed: %s", name, self._engine_error(status, text))
        if foreign and self.on_change is not None:
            self.on_change()
        return foreign

    async def run(self, stop: asyncio.Event) -> None:
        """Poll the file until ``stop`` is set; audit the engine's adapters every ``audit_interval``."""
        next_audit = time.monotonic() + self.audit_interval
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.poll_interval)
                break
            except TimeoutError:
                pass
            try:
                await self.reconcile()
            except Exception:  # noqa: BLE001 - the watcher must survive anything
                log.exception("adapter reconcile failed")
            if self.lora_enabled and time.monotonic() >= next_audit:
                next_audit = time.monotonic() + self.audit_interval
                try:
                    await self.audit()
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    log.debug("adapter audit: engine not answering: %s", e)
