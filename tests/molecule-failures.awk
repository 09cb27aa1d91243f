# The failures ansible reported, less those it ignored ("...ignoring" follows them), each with the
# two lines after it (the assertion or message); molecule's failed steps.
function flush() { printf "%s", held; held = ""; keep = 0 }
/^\.\.\.ignoring/ { held = ""; keep = 0; next }
/^(TASK|PLAY|RUNNING HANDLER) \[/ { flush(); next }
/^(fatal|failed): / { held = held substr($0, 1, 300) "\n"; keep = 2; next }
keep > 0 { held = held "    " substr($0, 1, 300) "\n"; keep--; next }
/Executed: Failed|^CRITICAL|^ERROR/ { flush(); print substr($0, 1, 300) }
END { flush() }
