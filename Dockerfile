# segeig web demo on a CUDA GPU (falls back to the CPU when none is visible).
#   docker build -t segeig .
#   docker run --gpus all -p 7860:7860 -v $PWD/weights:/app/weights segeig
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-pip python3-dev build-essential libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY segeig ./segeig
COPY app ./app
COPY examples ./examples
COPY weights ./weights
RUN python3 -m pip install --upgrade pip && python3 -m pip install .

# Backbone weights are downloaded from the Hugging Face hub on first use and
# cached here; mount a volume to keep them between runs.
ENV HF_HOME=/app/.cache/huggingface
EXPOSE 7860
CMD ["segeig", "demo", "--host", "0.0.0.0", "--port", "7860"]
