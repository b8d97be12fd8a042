"""A torchvision classifier served by Triton's Python backend as gpuslice's workers serve it: fp16,
random weights, one CUDA graph per batch size (1, 2, 4, ... up to the model's max batch), every
batch run on a static zero image (gpuslice's `gpu-run` feeds zeros too). Each request carries a
1-element INT32 `seed` and gets the top class of its row back as `class`.

The architecture comes from the model config's `arch` parameter (scripts/triton-peer.sh writes it).
With `input_copy` "1", each batch first copies its rows of a page-locked FP32 host image to the GPU
and casts them to fp16 into the graph's input, as gpuslice's workers do with each batch's rows (and
as Triton does with a request's input tensor): the same work per batch on both sides.
"""
import json

import torch
import torchvision
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        arch = config["parameters"]["arch"]["string_value"]
        largest = config["max_batch_size"]
        self.sizes = [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= largest]
        torch.backends.cudnn.benchmark = True
        model = getattr(torchvision.models, arch)(weights=None).eval().half().cuda()
        self.image = torch.zeros(self.sizes[-1], 3, 224, 224, dtype=torch.half, device="cuda")
        self.copied = None
        if config["parameters"].get("input_copy", {}).get("string_value") == "1":
            host = torch.zeros(self.sizes[-1], 3, 224, 224, dtype=torch.float32).pin_memory()
            self.copied = (host, torch.zeros_like(host, device="cuda"))
        self.graphs = {}
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for b in self.sizes:
                    for _ in range(3):
                        model(self.image[:b])
            torch.cuda.current_stream().wait_stream(side)
            for b in self.sizes:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    top = model(self.image[:b]).argmax(1).to(torch.int32)
                self.graphs[b] = (graph, top)
        torch.cuda.synchronize()

    def execute(self, requests):
        responses = []
        done = 0
        while done < len(requests):
            n = min(len(requests) - done, self.sizes[-1])
            size = next(b for b in self.sizes if b >= n)
            graph, top = self.graphs[size]
            if self.copied is not None:
                host, staging = self.copied
                staging[:n].copy_(host[:n], non_blocking=True)
                self.image[:n].copy_(staging[:n])
            graph.replay()
            classes = top[:n].cpu().numpy().reshape(n, 1)
            for i in range(n):
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("class", classes[i : i + 1])]))
            done += n
        return responses
