#!/bin/sh
# $1: the port rollwise hands out (the same inside the container as outside)
exec /bin/busybox httpd -f -p "$1" -h /www
