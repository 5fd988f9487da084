#!/usr/bin/env bash
# Stop the demo worker and Flower started by scripts/demo.sh (Redis and dockerd keep running).
pkill -f "celery -A worker worker" || true
pkill -f "celery -A worker flower" || true
pkill -f "celery -A worker beat" || true
echo "[stop] worker, beat and Flower stopped"
