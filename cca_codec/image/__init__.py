"""Images: reading and writing them (the input policy), and measuring them (PSNR, MS-SSIM, SSIMULACRA2)."""
