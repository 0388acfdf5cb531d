"""Media I/O: fetch a media reference under the URL policy, decode images and videos, encode mp4, frames zip,
transparency, and probe a file's size / frame count / fps."""
