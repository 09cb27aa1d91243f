# The failures ansible reported, less those it ignored ("...ignoring" follows them), each with the
# four lines after it (an assertion's, its result and its message; a message is kept longer, since
# it carries what differed); molecule's failed steps. Lines may start with the time `make molecule`
# stamps on them.
function flush() { printf "%s", held; held = ""; keep = 0 }
/^\.\.\.ignoring/ { held = ""; keep = 0; next }
/^([0-9][0-9]:[0-9][0-9]:[0-9][0-9] )?(TASK|PLAY|RUNNING HANDLER) \[/ { flush(); next }
/^(fatal|failed): / { held = held substr($0, 1, 300) "\n"; keep = 4; next }
keep > 0 { held = held "    " substr($0, 1, $1 == "msg:" ? 4000 : 300) "\n"; keep--; next }
/Executed: Failed|^CRITICAL|^ERROR/ { flush(); print substr($0, 1, 300) }
END { flush() }
