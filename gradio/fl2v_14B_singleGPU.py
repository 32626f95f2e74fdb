r"""Gradio demo: first-last-frame-to-video (the official demo's file name).

    python gradio/fl2v_14B_singleGPU.py --ckpt_dir_720p ./Wan2.1-FLF2V-14B-720P

The same demo as flf2v_14B_singleGPU.py; the page and its logic live in wan_demo.py.
"""

import wan_demo

if __name__ == "__main__":
    wan_demo.main("flf2v-14B")
