#!/usr/bin/env bash
# Assembles scalemoe's default training corpus from Debian packages that
# scripts/setup.sh installs, so the default pipeline needs no download:
#
#   Jane Austen's six novels (r-cran-janeaustenr)  one document per chapter
#   King James Bible (bible-kjv, bible-kjv-text)   one document per chapter
#   Jargon File 4.4.7 (jargon-text)                one document per entry
#   fortunes (fortunes, fortunes-min)              one document per fortune
#   Linux kernel docs (linux-doc-6.1)              one document per .rst file
#                                                  of a fixed list of folders
#
# Output format (read by `scalemoe prepare`): UTF-8 text; every document is
# followed by a line holding only the ASCII record separator 0x1E. Documents
# never contain 0x1E (it is stripped from the sources). Order is fixed (the
# list above, files in byte-wise sorted order), so the same packages give the
# same bytes.
#
# usage: scripts/corpus.sh OUT_FILE
# Idempotent: OUT_FILE.done marks a complete corpus; with it present the
# script does nothing. The file is written to OUT_FILE.tmp and renamed.
set -euo pipefail
export LC_ALL=C

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_FILE" >&2
  exit 2
fi
out="$1"
if [ -f "$out" ] && [ -f "$out.done" ]; then
  exit 0
fi

fortune_dir=/usr/share/games/fortunes
jargon=/usr/share/doc/jargon-text/jargon.txt.gz
linux_doc=/usr/share/doc/linux-doc-6.1/Documentation
# Prose-heavy folders of the kernel documentation (no translations, no ABI
# tables), about 13 MB of text together.
linux_doc_dirs=(admin-guide process filesystems networking core-api driver-api
  mm scheduler security locking RCU kernel-hacking doc-guide dev-tools block
  power bpf trace)
# Fortune files that are pictures, not prose.
fortune_skip='^(art|ascii-art)$'

missing=()
command -v Rscript >/dev/null || missing+=("Rscript (r-base-core)")
command -v bible >/dev/null || missing+=("bible (bible-kjv)")
[ -f "$jargon" ] || missing+=("$jargon (jargon-text)")
[ -f "$fortune_dir/fortunes" ] || missing+=("$fortune_dir/fortunes (fortunes-min)")
[ -d "$linux_doc" ] || missing+=("$linux_doc (linux-doc-6.1)")
if [ ${#missing[@]} -ne 0 ]; then
  echo "corpus.sh: missing ${missing[*]}; run scripts/setup.sh first" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
tmp="$out.tmp"
rm -f "$out.done"
rs=$'\x1e'

{
  # Austen: a new document at each book and at each "CHAPTER n" heading.
  Rscript --vanilla -e '
    library(janeaustenr)
    b <- austen_books()
    rs <- "\036"
    for (bk in levels(b$book)) {
      lines <- gsub(rs, "", b$text[b$book == bk], fixed = TRUE)
      starts <- grepl("^chapter [0-9ivxlc]+", lines, ignore.case = TRUE)
      have <- FALSE
      for (i in seq_along(lines)) {
        if (starts[i] && have) { cat(rs, "\n", sep = ""); have <- FALSE }
        if (nzchar(lines[i])) have <- TRUE
        cat(lines[i], "\n", sep = "")
      }
      if (have) cat(rs, "\n", sep = "")
    }'

  # Bible: chapters begin with a "Book N" heading; verse numbers are dropped.
  bible -l0 'Gen1:1-Rev22:21' </dev/null | tr -d "$rs" | awk -v rs="$rs" '
    /^[1-3]? ?[A-Z][A-Za-z ]+ [0-9]+$/ { if (have) print rs; have = 0 }
    { sub(/^ +[0-9]+ /, ""); if (length($0)) have = 1; print }
    END { if (have) print rs }'

  # Jargon File: each entry starts with an indented ":headword:" line.
  zcat "$jargon" | tr -d "$rs" | awk -v rs="$rs" '
    /^   :[^:]+:/ { if (have) print rs; have = 0 }
    { sub(/^   /, ""); if (length($0)) have = 1; print }
    END { if (have) print rs }'

  # Fortunes: %-separated, one document each.
  for f in $(ls "$fortune_dir"); do
    case "$f" in *.dat|*.u8) continue ;; esac
    [[ "$f" =~ $fortune_skip ]] && continue
    [ -f "$fortune_dir/$f" ] || continue
    tr -d "$rs" <"$fortune_dir/$f" | awk -v rs="$rs" '
      /^%$/ { if (have) print rs; have = 0; next }
      { if (length($0)) have = 1; print }
      END { if (have) print rs }'
  done

  # Kernel documentation: one document per .rst file.
  for d in "${linux_doc_dirs[@]}"; do
    find "$linux_doc/$d" -name '*.rst.gz' -type f | sort | while read -r f; do
      zcat "$f" | tr -d "$rs"
      printf '\n%s\n' "$rs"
    done
  done
} >"$tmp"

mv "$tmp" "$out"
touch "$out.done"
docs=$(grep -c "^$rs\$" "$out" || true)
echo "corpus.sh: wrote $out ($(stat -c %s "$out") bytes, $docs documents)"
