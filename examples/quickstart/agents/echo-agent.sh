#!/bin/sh
# A stand-in for a coding agent: prints the prompt ghit-work gave it on stdin.
# Without a logdir, ghit-work shows this output in its status lines as "agent codex| ...".
echo "--- $GHIT_WORK_AGENT got this prompt:"
cat
sleep 0.4  # "thinking": events that arrive meanwhile form the next batch
