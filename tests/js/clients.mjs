// Drives this server with the real JavaScript clients, as their users would, and prints one JSON report.
// Usage: node clients.mjs BASE_URL API_KEY VIDEO_PATH MASK_PNG_PATH OUT_DIR (trust the server's CA with
// NODE_EXTRA_CA_CERTS). The fal client has no host setting: requestMiddleware rewrites its URLs to BASE_URL.
import { readFileSync, writeFileSync } from "node:fs";
import { fal } from "@fal-ai/client";
import Replicate from "replicate";

const [base, key, videoPath, maskPath, outDir] = process.argv.slice(2);
const dataUri = (path, type) => `data:${type};base64,${readFileSync(path).toString("base64")}`;
const report = {};

// replicate: the bare host as its base URL (the server answers HOST/v1 too), a local file as input (uploaded
// through POST /files with metadata as a file part).
const replicate = new Replicate({ auth: key, baseUrl: base });
const output = await replicate.run("prunaai/vace-14b", {
  input: {
    prompt: "a red square slides to the right",
    src_video: readFileSync(videoPath),
    size: "832*480",
    frame_num: 17,
    sample_steps: 2,
    seed: 5,
  },
});
writeFileSync(`${outDir}/replicate.mp4`, Buffer.from(await (await output.blob()).arrayBuffer()));
report.replicate = { url: output.url().toString() };

// @fal-ai/client: https://fal.run/... -> BASE/..., https://queue.fal.run/... -> BASE/queue/...
fal.config({
  credentials: key,
  requestMiddleware: async (request) => ({
    ...request,
    url: request.url.replace(/^https:\/\/queue\.fal\.run/, `${base}/queue`).replace(/^https:\/\/fal\.run/, base),
  }),
});
const updates = [];
const pose = await fal.subscribe("fal-ai/wan-vace-14b/pose", {
  input: {
    prompt: "a dancer",
    video_url: dataUri(videoPath, "video/mp4"),
    preprocess: true,
    num_frames: 17,
    num_inference_steps: 2,
    resolution: "240p",
  },
  logs: true,
  onQueueUpdate: (update) => updates.push(update),
});
report.fal_pose = {
  requestId: pose.requestId,
  video: pose.data.video,
  logTimestamps: updates.flatMap((u) => (u.logs || []).map((l) => l.timestamp)),
};
const inpaint = await fal.subscribe("fal-ai/wan-22-vace-fun-a14b/inpainting", {
  input: {
    prompt: "a blue square",
    video_url: dataUri(videoPath, "video/mp4"),
    mask_image_url: dataUri(maskPath, "image/png"),
    num_frames: 17,
    num_inference_steps: 2,
    resolution: "240p",
  },
});
report.fal_inpainting = { requestId: inpaint.requestId, video: inpaint.data.video };
console.log(JSON.stringify(report));
