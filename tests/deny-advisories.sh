#!/usr/bin/env bash
# `cargo deny check advisories` against the live RustSec database (github.com/rustsec/advisory-db)
# when it can be fetched, else against the snapshot in ../shared/advisory-db (beside the
# repository; ADVISORY_DB=DIR names another copy). Says which database it used; fails when a
# dependency has an advisory, and when neither database is available (never skips silently).
set -euo pipefail
cd "$(dirname "$0")/.."

if timeout 30 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  echo "advisories: live RustSec database (github.com/rustsec/advisory-db)"
  exec cargo deny --locked check advisories
fi

snap="${ADVISORY_DB:-../shared/advisory-db}"
if [ ! -d "$snap/crates" ]; then
  echo "advisories: FAILED: github.com/rustsec/advisory-db is unreachable and there is no snapshot at $snap (set ADVISORY_DB=DIR)" >&2
  exit 1
fi
about=$(head -n1 "$snap/SNAPSHOT" 2>/dev/null || echo "snapshot (no SNAPSHOT file)")
echo "advisories: the live database is unreachable; using $snap: $about"

# cargo-deny reads a database from <db-path>/<name>-<hash of its URL> and needs it to be a git
# checkout (it reads HEAD's date). The snapshot is a plain, read-only copy: put it in a
# throw-away git repository dated as the snapshot, under the directory name cargo-deny 0.20
# derives from the official URL, and run offline against a copy of deny.toml pointing there.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/dbs/advisory-db-3157b0e258782691"
mkdir -p "$db"
cp -R "$snap/." "$db/"
chmod -R u+w "$db"
date=$(grep -o '[0-9]\{4\}-[0-9]\{2\}-[0-9]\{2\}' "$snap/SNAPSHOT" 2>/dev/null | head -n1 || true)
stamp="${date:-1970-01-01}T00:00:00Z"
(cd "$db" && git init -q && git add -A \
  && GIT_AUTHOR_DATE="$stamp" GIT_COMMITTER_DATE="$stamp" \
     git -c user.name=snapshot -c user.email=snapshot@localhost commit -q -m "$about")
sed "s|^db-urls = .*|&\ndb-path = \"$work/dbs\"|" deny.toml > "$work/deny.toml"
cargo deny --offline --locked --config "$work/deny.toml" check advisories
echo "advisories: checked against the snapshot of ${date:-unknown date} ($snap)"
