# dml-dist images. Two targets:
#   docker build --target cuda -t dml-dist:cuda .   # GPU nodes: CUDA torch, NCCL, faiss-gpu
#   docker build --target cpu  -t dml-dist:cpu  .   # CPU nodes and the docker-compose stack
# Versions pinned to what the test suite ran with (torch 2.13.0, ray 2.60.0, deepspeed 0.19.8).
# Not built on the development machine (it has no Docker engine); see README.

FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

FROM base AS cpu
# torch first and explicitly: a bare requirement would pull the multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY dml_dist ./dml_dist
COPY dml_dist/configs ./configs
RUN pip install "ray[train,default]==2.60.0" deepspeed==0.19.8 faiss-cpu==1.15.1 . \
    && python -c "import dml_dist, deepspeed, ray, faiss"

FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04 AS cuda
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3-pip git \
    && ln -sf /usr/bin/python3.11 /usr/local/bin/python && rm -rf /var/lib/apt/lists/*
WORKDIR /app
RUN python -m pip install --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0
COPY pyproject.toml README.md ./
COPY dml_dist ./dml_dist
COPY dml_dist/configs ./configs
# faiss-gpu comes from the faiss-gpu-cu12 wheels; faiss-cpu is swapped out for it.
RUN python -m pip install "ray[train,default]==2.60.0" deepspeed==0.19.8 . \
    && python -m pip uninstall -y faiss-cpu && python -m pip install faiss-gpu-cu12 \
    && python -c "import dml_dist, deepspeed, ray, faiss"
