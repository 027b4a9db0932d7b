# dml-dist images, tagged with the package version (pyproject.toml). The cluster files use
# ghcr.io/dml-dist/dml-dist:0.1.0-cuda (cluster/kuberay/*.yaml, cluster/ray-cluster.yaml): build it
# and push it to your registry (or change the reference there); docker-compose builds the cpu
# target itself as dml-dist:0.1.0-cpu.
#   docker build --target cuda -t ghcr.io/dml-dist/dml-dist:0.1.0-cuda .   # GPU nodes: CUDA torch, NCCL, faiss-gpu
#   docker build --target cpu  -t ghcr.io/dml-dist/dml-dist:0.1.0-cpu  .   # CPU nodes
# Pinned to what the test suite runs with: Python 3.11, pip 26.3, torch 2.13.0 + torchvision
# 0.28.0, timm 1.0.31, ray 2.60.0, deepspeed 0.19.8, and faiss through the package's extras: `cpu`
# (faiss-cpu 1.15.1), `gpu` (faiss-gpu-cu12 1.14.1.post1). torch and torchvision come first,
# pinned, both from the one PyTorch index of the target (TORCH_INDEX_URL: cpu, or cu128 to match
# the CUDA 12.8 toolkit that DeepSpeed compiles its ops with): timm imports torchvision, which
# must be built against the very torch installed (PyPI's torchvision over the CPU-only torch fails
# with `operator torchvision::nms does not exist`). `make setup` installs PyPI's standard build of
# both instead (CUDA-capable; on a machine without a GPU DeepSpeed picks its CPU accelerator).
# Pretrained weights are not baked in: HF_HOME is /home/ray/.cache/huggingface (mount a warm cache
# there and set HF_HUB_OFFLINE=1 on a cluster without internet, or use model.pretrained: FILE).
# Both targets install into the virtual environment /opt/venv
# (owned by root, read only at run time) and run as the unprivileged user ray (uid 1000, home
# /home/ray).
# The base images are build arguments so that a build can start from a local copy of the same
# Debian / Ubuntu release (pin them by digest for reproducible builds).
ARG CPU_BASE=python:3.11-slim-bookworm
ARG CUDA_BASE=nvidia/cuda:12.8.1-devel-ubuntu22.04

# ---- cpu: Debian 12 with CPython 3.11 -------------------------------------------------------
FROM ${CPU_BASE} AS cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HOME=/home/ray HF_HOME=/home/ray/.cache/huggingface
# build-essential: DeepSpeed compiles its CPU ops (shared-memory collectives) at first use;
# rsync: the cluster launcher copies files into containers with it. The directories that Ray,
# the token, the metrics targets and the storage use are created here, owned by ray, so that
# volumes mounted over them start writable for that user.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential rsync \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash ray \
    && mkdir -p /home/ray/.ray /tmp/ray /tmp/dml-dist /mnt/dml-dist \
    && chown ray:ray /home/ray/.ray /tmp/ray /tmp/dml-dist /mnt/dml-dist \
    && python3 -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" \
    && python3 -m venv /opt/venv && pip install pip==26.3 \
    && echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/dml-dist-venv.sh
# torch and torchvision first, pinned, from one index (see the top of this file).
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 torchvision==0.28.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dml_dist ./dml_dist
COPY dml_dist/configs ./configs
RUN pip install "ray[train,default]==2.60.0" deepspeed==0.19.8 faiss-cpu==1.15.1 timm==1.0.31 ".[cpu]" \
    && python -c "import dml_dist, deepspeed, faiss, ray, timm, torch; assert torch.__version__.startswith('2.13.0+cpu'), torch.__version__"
USER ray

# ---- cuda: Ubuntu 22.04 with the CUDA 12.8 toolkit and CPython 3.11 ----------------------------
FROM ${CUDA_BASE} AS cuda
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HOME=/home/ray HF_HOME=/home/ray/.cache/huggingface
# Ubuntu 22.04's python3 is 3.10 (and its python3-pip belongs to it): Python 3.11 comes from the
# deadsnakes archive, and the venv gets pip from 3.11's own ensurepip. The devel image carries
# nvcc, which DeepSpeed needs to build its CUDA ops at first use; torch brings its own cuDNN and
# NCCL. rsync: the cluster launcher copies files into containers with it.
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv rsync \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash ray \
    && mkdir -p /home/ray/.ray /tmp/ray /tmp/dml-dist /mnt/dml-dist \
    && chown ray:ray /home/ray/.ray /tmp/ray /tmp/dml-dist /mnt/dml-dist \
    && python3.11 -m venv /opt/venv && pip install pip==26.3 \
    && echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/dml-dist-venv.sh
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 torchvision==0.28.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dml_dist ./dml_dist
COPY dml_dist/configs ./configs
# boto3: the cluster launcher's AWS autoscaler runs on the head (cluster/ray-cluster.yaml).
RUN pip install "ray[train,default]==2.60.0" deepspeed==0.19.8 boto3==1.44.5 timm==1.0.31 ".[gpu]" \
    && python -c "import dml_dist, deepspeed, faiss, ray, timm, torch; assert torch.__version__.startswith('2.13.0+cu128'), torch.__version__"
USER ray
