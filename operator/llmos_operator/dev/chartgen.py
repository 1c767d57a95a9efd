"""Generate the Helm chart's engine-flag allow-list (the parameter of the `<fullname>-engine-flags`
ValidatingAdmissionPolicy) from the one list in runtime/llmos_runtime/engine_args.py.

    python -m llmos_operator.dev.chartgen --write   # write helm/llmos/templates/engine-flags.yaml
    python -m llmos_operator.dev.chartgen --check   # exit 1 if the checked-in file differs

The ConfigMap's keys are the normalised flags (``--max-num-seqs``; a key is a valid ConfigMap key), so the policy's
CEL looks a flag up with ``flag in params.data`` in constant time. ``isolation.extraEngineFlags`` adds flags at
install time, normalised the same way by the template.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmos_runtime.engine_args import DEFAULT_ALLOWED_FLAGS, REMOTE_CODE_FLAG, normalise_flag

REPO_ROOT = Path(__file__).resolve().parents[3]
OUTPUT = REPO_ROOT / "helm" / "llmos" / "templates" / "engine-flags.yaml"

_TEMPLATE = """\
{{{{- /*
Generated from runtime/llmos_runtime/engine_args.py (DEFAULT_ALLOWED_FLAGS) by
`python -m llmos_operator.dev.chartgen --write`. Do not edit by hand: a unit test fails when the two disagree.
The parameter of the ValidatingAdmissionPolicy <fullname>-engine-flags: one key per allowed vLLM flag.
*/ -}}}}
{{{{- if .Values.isolation.admissionPolicies }}}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{{{ include "llmos.fullname" . }}}}-engine-flags
  namespace: {{{{ .Release.Namespace }}}}
  labels: {{{{- include "llmos.labels" . | nindent 4 }}}}
data:
{flags}
{{{{- range .Values.isolation.extraEngineFlags }}}}
{{{{- $flag := regexReplaceAll "=.*$" (trim .) "" }}}}
{{{{- if hasPrefix "--" $flag }}}}{{{{ $flag = printf "--%s" (trimPrefix "--" $flag | replace "_" "-") }}}}{{{{ end }}}}
{{{{- if eq $flag "{remote_code}" }}}}
{{{{- fail "isolation.extraEngineFlags: {remote_code} is allowed per tenant (Tenant spec.policy.allowRemoteCode), not for everyone" }}}}
{{{{- end }}}}
{{{{- if not (regexMatch "^--?[A-Za-z0-9][-A-Za-z0-9.]*$" $flag) }}}}
{{{{- fail (printf "isolation.extraEngineFlags: %q is not a flag (expected --name)" .) }}}}
{{{{- end }}}}
  {{{{ $flag | quote }}}}: "isolation.extraEngineFlags"
{{{{- end }}}}
{{{{- end }}}}
"""


def render() -> str:
    flags = sorted({normalise_flag(f) for f in DEFAULT_ALLOWED_FLAGS} - {REMOTE_CODE_FLAG})
    return _TEMPLATE.format(flags="\n".join(f'  "{f}": "engine_args.DEFAULT_ALLOWED_FLAGS"' for f in flags),
                            remote_code=REMOTE_CODE_FLAG)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the chart template")
    mode.add_argument("--check", action="store_true", help="exit 1 if the chart template is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        OUTPUT.write_text(text)
        print(f"wrote {OUTPUT.relative_to(REPO_ROOT)}")
        return 0
    if not OUTPUT.exists() or OUTPUT.read_text() != text:
        print(f"{OUTPUT.relative_to(REPO_ROOT)} is out of date: run python -m llmos_operator.dev.chartgen --write",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
