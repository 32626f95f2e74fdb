r"""Gradio demo: first-last-frame-to-video with the FLF2V-14B-720P model.

    python gradio/flf2v_14B_singleGPU.py --ckpt_dir ./Wan2.1-FLF2V-14B-720P

(``--ckpt_dir_720p``, the official demo's flag, names the same folder; the official demo's file
name, fl2v_14B_singleGPU.py, runs this demo too.) The page and its logic live in wan_demo.py
beside this file; --help lists the options.
"""

import wan_demo

if __name__ == "__main__":
    wan_demo.main("flf2v-14B")
