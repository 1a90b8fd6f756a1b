#!/bin/sh
# $1: the port rollwise hands out (the same inside the container as outside); $HOST:
# 0.0.0.0 in a published container, the host's address in its network on an SSH host
exec /bin/busybox httpd -f -p "${HOST:-0.0.0.0}:$1" -h /www
