"""Fixed shell scripts run inside containers.

Every script is a constant; caller input only ever reaches it as a positional argument
(``"$1"``, ...) of an argument vector sent through the LXD API, never spliced into script text,
and no shell on the host is involved. They are POSIX sh (tested with busybox ash) and run under
:data:`SH`, whatever shell the caller's command itself gets.
"""

#: the interpreter of these scripts inside the container
SH = "/bin/sh"

#: ``output_guard = "container"``: runs the caller's command as ``"$1" -c "$2"`` and caps stdout
#: and stderr at ``$3`` bytes each *inside* the container, so a runaway command cannot fill the
#: host's LXD log directory. The command keeps running past the cap (the rest is drained to
#: /dev/null); its exit status is passed out through the command substitution on fd 3.
#: fds: 4/5 = the recorded stdout/stderr, 6 = the stdout pipe. Only the command gets the marker
#: variable ``CLAUDE_NET_EXEC=$4``: a timeout kills the command's processes, and the readers then
#: see EOF, flush what they have and end, so the partial output is kept. Readers see EOF when the
#: command and every process that inherited its stdout/stderr have exited (as with ssh):
#: background jobs should redirect their output.
EXEC_WRAPPER = r"""S=$1; C=$2; N=$3; M=$4
exec 4>&1 5>&2
r=$( { { { CLAUDE_NET_EXEC=$M "$S" -c "$C" 2>&1 1>&6 3>&- 4>&- 5>&- 6>&-; echo $? >&3; } 2>/dev/null \
           | { head -c "$N" >&5; exec cat >/dev/null; } 6>&- 4>&-; } 6>&1 \
       | { head -c "$N" >&4; exec cat >/dev/null; } 5>&-; } 3>&1 )
exit "${r:-255}"
"""

#: Prints what the backend needs to know about a container, one ``key=value`` per line.
PROBE = r"""b=$(command -v bash 2>/dev/null) || b=
echo "bash=$b"
if command -v head >/dev/null 2>&1 && command -v cat >/dev/null 2>&1; then echo guard=1; else echo guard=0; fi
"""

#: Kills every process whose environment holds ``CLAUDE_NET_EXEC=$1`` (an exec being timed out or
#: cancelled, or, after a restart of the hub, a job's: its shell, pipes and any background children
#: that kept the variable) and prints how many it killed. Several passes catch processes forked
#: while the previous pass ran; a process already killed is not counted twice.
KILL = r"""m="CLAUDE_NET_EXEC=$1"
n=0; killed=" "
for pass in 1 2 3 4; do
  found=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    if tr '\000' '\n' < "$d/environ" 2>/dev/null | grep -qxF "$m"; then
      if kill -9 "$p" 2>/dev/null; then
        found=1
        case "$killed" in *" $p "*) ;; *) killed="$killed$p "; n=$((n+1)) ;; esac
      fi
    fi
  done
  [ -z "$found" ] && break
done
echo "$n"
exit 0
"""

#: Commits a file write: moves the uploaded temporary file ``$1`` over ``$2`` with one rename
#: (readers never see a half-written file). A symlink at ``$2`` is resolved *inside the
#: container* and the write goes through it. Unless the caller set them (``$3`` = "1": mode
#: given, ``$4`` = "1": owner given), the replaced file's mode and owner are kept.
#: Exit 21: ``$2`` is a directory; 23: the rename failed. The temporary file never stays behind.
WRITE_COMMIT = r"""t=$1; p=$2
if [ -L "$p" ]; then
  r=$(readlink -f -- "$p" 2>/dev/null) && [ -n "$r" ] && p=$r
fi
if [ -d "$p" ]; then rm -f -- "$t"; exit 21; fi
if [ -e "$p" ]; then
  [ "$3" = 1 ] || chmod "$(stat -c %a -- "$p")" -- "$t" 2>/dev/null
  [ "$4" = 1 ] || chown "$(stat -c %u:%g -- "$p")" -- "$t" 2>/dev/null
fi
e=$(mv -f -- "$t" "$p" 2>&1) || { rm -f -- "$t"; echo "$e" >&2; exit 23; }
exit 0
"""

#: Renames the uploaded ``$1`` over ``$2`` once the line ``commit`` arrives on stdin; EOF or
#: anything else exits 3 and touches nothing. Started while an upload is still running (see
#: :class:`claude_net_lxd.streams.WaitingExec`), so the exec's own cost overlaps the upload, and
#: so does the work ext4 would otherwise do inside the final rename:
#:
#: * a background loop writes back what has arrived every 50 ms (``sync -d``): ext4 allocates and
#:   flushes a file's pending data when it is renamed over another one (``auto_da_alloc``), ~50 ms
#:   for 50 MiB; the loop ends with the script (``kill -0 $$``) and never holds the exec's pipes;
#: * the file being replaced gets a second name ``$3`` first, so the rename does not free its
#:   blocks (~15 ms for 50 MiB); that name is removed in the background once the rename is done.
#:
#: ``mv -T`` refuses to move the file into a directory (then :data:`WRITE_COMMIT` takes over).
COMMIT_ON_LINE = r"""t=$1; p=$2; o=$3
( while sleep 0.05 && kill -0 $$ 2>/dev/null; do sync -d -- "$t" 2>/dev/null; done ) </dev/null >/dev/null 2>&1 &
f=$!
[ -f "$p" ] && [ ! -L "$p" ] && ln -f -- "$p" "$o" 2>/dev/null
IFS= read -r w; r=$?
kill "$f" 2>/dev/null
if [ "$r" = 0 ] && [ "$w" = commit ]; then mv -f -T -- "$t" "$p"; r=$?; else r=3; fi
( rm -f -- "$o" ) </dev/null >/dev/null 2>&1 &
exit "$r"
"""

#: Runs the rest of its arguments (``"$3" ...``) in the directory ``$1``. LXD's own ``cwd`` falls
#: back to ``/`` without a word when the directory is missing; here a directory that cannot be
#: entered ends the exec before the command starts: the line ``claude-net-no-cwd:$2`` (``$2`` a
#: nonce only the hub knows, which the command never sees) on stderr and exit 125.
IN_CWD = r"""cd -- "$1" 2>/dev/null || { printf 'claude-net-no-cwd:%s\n' "$2" >&2; exit 125; }
shift 2
exec "$@"
"""

#: Says, by its exit status, what ``$1`` is (symlinks followed, inside the container) without
#: opening it: LXD's file API would open a FIFO and wait for a writer, holding the request (and
#: LXD's ``forkfile``) for as long as nobody writes. 0: a regular file, a directory or nothing at
#: all (the file API answers those itself); 10: a FIFO; 11: a character device; 12: a block
#: device; 13: a socket; 14: anything else.
FILE_KIND = r"""p=$1
if [ -f "$p" ] || [ -d "$p" ] || [ ! -e "$p" ]; then exit 0; fi
[ -p "$p" ] && exit 10
[ -c "$p" ] && exit 11
[ -b "$p" ] && exit 12
[ -S "$p" ] && exit 13
exit 14
"""

#: what :data:`FILE_KIND`'s exit statuses name
FILE_KINDS = {10: "a named pipe (FIFO)", 11: "a character device", 12: "a block device", 13: "a socket",
              14: "not a regular file"}
