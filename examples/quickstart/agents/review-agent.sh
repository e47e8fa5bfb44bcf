#!/bin/sh
# A stand-in for a resumable agent: prints a session id that ghit-work finds with
# session_id_pattern; the next batch runs resume_cmd with it (--resume ID).
if [ "$1" = "--resume" ]; then session="$2"; else session="review-$$"; fi
echo "session id: $session"
echo "--- $GHIT_WORK_AGENT got this prompt:"
cat
sleep 0.4  # "thinking": events that arrive meanwhile form the next batch
echo "reviewed." >&2
