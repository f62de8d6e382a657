# Kaldi-style option parsing, to be sourced after a script declares its defaults:
#
#   stage=0            # first stage to run
#   nj=2               # parallel jobs
#   . recipes/utils/parse_options.sh
#
# Every `--foo-bar value` (or `--foo-bar=value`) sets the already-declared variable
# `foo_bar`; an option whose variable was never declared is an error, so typos fail
# loudly. `--help` prints `$help_message` (if set) and the options with their current
# values: every `name=value  # comment` line of the calling script above the line that
# sources this file (a default without a comment is settable but not listed).
# Positional arguments are left in "$@".

_po_script=${0}
[ -r "$_po_script" ] || _po_script=${OLDPWD:-.}/$0   # the caller cd-ed after starting
_po_print_help() {
  [ -n "${help_message:-}" ] && echo -e "$help_message" && echo
  echo "Options (--name value; defaults shown):"
  # Defaults are the `name=value  # comment` lines before this file is sourced.
  sed -n '1,/parse_options.sh/p' "$_po_script" \
    | grep -E '^[a-z_][a-z0-9_]*=.*#' \
    | while IFS= read -r line; do
        name=${line%%=*}
        comment=""
        case "$line" in *"#"*) comment=${line#*#} ;; esac
        printf '  --%-20s %-28s %s\n' "${name//_/-}" "(${!name})" "${comment# }"
      done
}

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) _po_print_help; exit 0 ;;
    --*=*) _po_name=${1%%=*}; _po_value=${1#*=}; shift ;;
    --*)
      _po_name=$1
      if [ $# -lt 2 ]; then echo "$(basename "$_po_script"): option $1 needs a value" >&2; exit 2; fi
      _po_value=$2; shift 2 ;;
    *) break ;;
  esac
  _po_var=${_po_name#--}
  _po_var=${_po_var//-/_}
  if [ -z "${!_po_var+set}" ]; then
    echo "$(basename "$_po_script"): unknown option $_po_name (see --help)" >&2
    exit 2
  fi
  printf -v "$_po_var" '%s' "$_po_value"
  # remember what the user set explicitly (e.g. to tell `--stage 0` from the default)
  eval "_po_set_${_po_var}=1"
done
unset _po_name _po_value _po_var
