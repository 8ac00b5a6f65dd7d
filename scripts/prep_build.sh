# Sourced by the scripts: `prep_build ARGS...` runs `$BIN/hms-prep build ARGS...` and goes on when the
# build finished with some rows failed (exit 3: listed, recorded in labels.parquet, usable without them).
prep_build() {
  local status=0
  "$BIN/hms-prep" build "$@" || status=$?
  [ "$status" -eq 0 ] || [ "$status" -eq 3 ] || exit "$status"
}
